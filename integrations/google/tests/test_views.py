"""The agent's integrations page: what it shows, who may see it, how it is reached."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from integrations.google.models import GoogleIntegration

pytestmark = pytest.mark.django_db


def page(client, agent) -> str:
    response = client.get(reverse("integrations:agent", args=[agent.pk]))
    assert response.status_code == 200
    return response.content.decode()


def test_the_page_says_what_each_scope_lets_the_agent_read(owner, agent, google):
    html = page(owner, agent)

    for scope, words in (
        (
            "https://www.googleapis.com/auth/calendar.events.readonly",
            "cannot create, change or delete events",
        ),
        ("https://www.googleapis.com/auth/gmail.readonly", "cannot send, delete"),
        ("https://www.googleapis.com/auth/drive.readonly", "cannot create, change, share"),
    ):
        assert scope in html
        assert words in html
    assert html.count("restricted") == 2  # Gmail and Drive
    assert html.count('data-state="not_connected"') == 3
    connect_url = reverse("integrations:google-connect", args=[agent.pk])
    assert html.count(f'<form method="post" action="{connect_url}">') == 3  # one each


def test_the_page_shows_a_connection_and_its_last_refresh(connect, owner, agent):
    connect("drive")

    html = page(owner, agent)

    assert 'id="capability-drive" data-state="connected"' in html
    assert "Connected since" in html
    assert "Last token refresh" in html
    assert "Disconnect Google" in html
    assert "Connect Google Drive" not in html


def test_without_a_client_id_the_page_says_google_is_off(owner, agent, settings):
    settings.GOOGLE_CLIENT_ID = ""

    html = page(owner, agent)

    assert 'id="google-not-configured"' in html
    assert '<form method="post" action="/integrations' not in html
    response = owner.post(
        reverse("integrations:google-connect", args=[agent.pk]), {"capability": "calendar"}
    )
    assert response.status_code == 302  # back to the page, nothing started
    assert not GoogleIntegration.objects.exists()


def test_an_operator_switch_shows_on_the_page(owner, agent, google, settings):
    settings.GOOGLE_CAPABILITIES = ["calendar"]

    html = page(owner, agent)

    assert 'id="capability-gmail" data-state="off"' in html
    assert "Switched off by the operator" in html
    assert "Connect Gmail" not in html


def test_the_page_has_no_inline_script_or_style(connect, owner, agent):
    """A strict Content-Security-Policy will forbid both."""
    connect("calendar")
    html = page(owner, agent)
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert " style=" not in html
    assert "<style" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no onclick= and the like


def test_connect_and_disconnect_are_post_only_with_csrf(alice, agent, google):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    connect_url = reverse("integrations:google-connect", args=[agent.pk])
    disconnect_url = reverse("integrations:google-disconnect", args=[agent.pk])

    assert browser.get(connect_url).status_code == 405
    assert browser.get(disconnect_url).status_code == 405
    assert browser.post(connect_url, {"capability": "calendar"}).status_code == 403
    assert browser.post(disconnect_url).status_code == 403
    assert google.log("authorize") == []


def test_the_pages_need_a_signed_in_owner(client, agent):
    for url in (
        reverse("integrations:agent", args=[agent.pk]),
        reverse("integrations:google-callback") + "?state=x&code=y",
    ):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("account_login"))


def test_another_users_agent_page_is_404_even_when_connected(connect, client, bob, agent):
    connect("gmail")
    client.force_login(bob)

    assert client.get(reverse("integrations:agent", args=[agent.pk])).status_code == 404
    assert (
        client.post(reverse("integrations:google-disconnect", args=[agent.pk])).status_code == 404
    )
    assert GoogleIntegration.objects.filter(agent=agent).exists()


def test_the_agent_page_links_to_its_integrations(owner, agent):
    response = owner.get(reverse("billing:agent", args=[agent.pk]))
    assert reverse("integrations:agent", args=[agent.pk]) in response.content.decode()


def test_operators_see_a_connection_in_admin_but_never_its_tokens(connect, agent, admin_client):
    connect("calendar")
    integration = GoogleIntegration.objects.get(agent=agent)

    listing = admin_client.get(reverse("admin:integrations_googleintegration_changelist"))
    detail = admin_client.get(
        reverse("admin:integrations_googleintegration_change", args=[integration.pk])
    )

    assert listing.status_code == 200
    assert detail.status_code == 200
    assert "Google Calendar" in listing.content.decode()
    for response in (listing, detail):
        assert integration.token["access_token"] not in response.content.decode()
        assert integration.token["refresh_token"] not in response.content.decode()
