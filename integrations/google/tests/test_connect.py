"""Connecting an agent to Google: OAuth 2 with PKCE against a real authorization server."""

from __future__ import annotations

import time

import httpx2
import pytest
from django.test import Client
from django.urls import reverse

from agents.models import AgentEvent
from agents.services import create_agent
from integrations.google.flow import SESSION_KEY
from integrations.google.models import GoogleIntegration, IntegrationStatus
from integrations.google.tests.google import (
    CALENDAR,
    CLIENT_ID,
    CLIENT_SECRET,
    GMAIL,
    callback_path,
    query_of,
)
from safer_claw.accounts.tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_connect_asks_google_for_one_read_only_scope_with_pkce(owner, agent, google):
    response = owner.post(
        reverse("integrations:google-connect", args=[agent.pk]), {"capability": "calendar"}
    )

    assert response.status_code == 303
    url = response["Location"]
    assert url.startswith(f"{google.base_url}/o/oauth2/v2/auth?")
    asked = query_of(url)
    assert asked["scope"] == CALENDAR
    assert asked["client_id"] == CLIENT_ID
    assert asked["response_type"] == "code"
    assert asked["code_challenge_method"] == "S256"
    assert len(asked["code_challenge"]) == 43  # base64url of a SHA-256 digest
    assert asked["access_type"] == "offline"
    assert asked["include_granted_scopes"] == "true"
    assert asked["prompt"] == "consent"  # no refresh token held yet
    assert asked["redirect_uri"] == "http://testserver/integrations/google/callback"
    assert len(asked["state"]) >= 43


def test_full_connect_flow_stores_the_grant(connect, agent, google, alice):
    response = connect("calendar")

    assert response.status_code == 302
    assert response["Location"] == reverse("integrations:agent", args=[agent.pk])
    integration = GoogleIntegration.objects.get(agent=agent)
    assert integration.status == IntegrationStatus.CONNECTED
    assert integration.granted_scopes == {CALENDAR}
    assert integration.token["access_token"]
    assert integration.token["refresh_token"]
    assert integration.token["expires_at"] > 0
    # The code was exchanged with the PKCE verifier, at the real token endpoint.
    (exchange,) = google.log("token")
    assert exchange["grant_type"] == "authorization_code"
    assert exchange["status"] == 200
    assert exchange["code_verifier_sent"]
    event = AgentEvent.objects.filter(agent=agent, source="integrations").last()
    assert event.actor == alice
    assert "Google Calendar connected" in event.reason
    assert integration.token["access_token"] not in event.reason


def test_each_capability_is_granted_on_its_own_and_adds_to_the_grant(connect, agent, google):
    connect("calendar")
    connect("gmail")

    integration = GoogleIntegration.objects.get(agent=agent)
    assert integration.granted_scopes == {CALENDAR, GMAIL}
    (_, second) = google.log("authorize")
    assert second["query"]["scope"] == GMAIL  # only the new one is asked for
    assert "prompt" not in second["query"]  # a refresh token is held: no forced consent


def test_a_scope_the_owner_did_not_grant_is_recorded_and_stays_off(connect, agent, google):
    connect("calendar")
    # Google's granular consent: the owner unticks Gmail on the consent screen.
    response = connect("gmail", grant=[])

    integration = GoogleIntegration.objects.get(agent=agent)
    assert integration.granted_scopes == {CALENDAR}
    assert integration.not_granted_scopes == [GMAIL]
    assert response.status_code == 302


def test_the_connect_page_says_which_were_not_granted(connect, owner, agent):
    connect("calendar")
    connect("gmail", grant=[])

    page = owner.get(reverse("integrations:agent", args=[agent.pk])).content.decode()
    assert 'id="capability-calendar" data-state="connected"' in page
    assert 'id="capability-gmail" data-state="not_granted"' in page
    assert 'id="capability-drive" data-state="not_connected"' in page


def test_cancelling_at_google_records_not_granted_and_connects_nothing(connect, agent, google):
    response = connect("drive", allow=False)

    assert response.status_code == 302
    assert not GoogleIntegration.objects.filter(agent=agent).exists()
    assert google.log("token") == []  # no code, nothing exchanged
    event = AgentEvent.objects.filter(agent=agent, source="integrations").last()
    assert "Google Drive not granted" in event.reason
    assert "access_denied" in event.reason


def _started(owner, agent, capability="calendar"):
    response = owner.post(
        reverse("integrations:google-connect", args=[agent.pk]), {"capability": capability}
    )
    return response["Location"]


def test_a_replayed_state_is_refused(owner, agent, google):
    back = callback_path(google.consent(_started(owner, agent)))
    assert owner.get(back).status_code == 302  # the first use connects
    GoogleIntegration.objects.filter(agent=agent).delete()

    replay = owner.get(back)

    assert replay.status_code == 400
    assert b"not completed" in replay.content
    assert not GoogleIntegration.objects.filter(agent=agent).exists()
    assert len(google.log("token")) == 1  # the replay reached nothing at Google


def test_a_forged_state_is_refused(owner, agent, google):
    back = google.consent(_started(owner, agent))
    code = query_of(back)["code"]

    forged = owner.get(
        reverse("integrations:google-callback"), {"code": code, "state": "forged-" + "x" * 40}
    )

    assert forged.status_code == 400
    assert not GoogleIntegration.objects.filter(agent=agent).exists()
    assert google.log("token") == []


def test_a_state_from_another_session_is_refused(owner, agent, google):
    """Login CSRF: Mallory begins a connect for her own agent and makes Alice's
    browser finish it, to tie Mallory's Google account to Alice's session. The
    state lives only in Mallory's session, so Alice's browser gets nothing."""
    mallory = UserFactory(email="mallory@example.com")
    mallorys_browser = Client()
    mallorys_browser.force_login(mallory)
    mallorys_agent = create_agent(owner=mallory, name="mine", provider_key="sk-mallory")
    back = callback_path(google.consent(_started(mallorys_browser, mallorys_agent)))

    assert owner.get(back).status_code == 400  # in Alice's browser
    assert not GoogleIntegration.objects.exists()
    assert google.log("token") == []


def test_another_users_agent_cannot_be_connected_or_seen(client, bob, agent, google):
    client.force_login(bob)

    assert client.get(reverse("integrations:agent", args=[agent.pk])).status_code == 404
    assert (
        client.post(
            reverse("integrations:google-connect", args=[agent.pk]), {"capability": "gmail"}
        ).status_code
        == 404
    )
    assert (
        client.post(reverse("integrations:google-disconnect", args=[agent.pk])).status_code == 404
    )
    assert google.log("authorize") == []


def test_the_authorization_server_requires_pkce(owner, agent, google):
    """Google's stand-in is configured like Google (PKCE, S256): a code cannot be
    had without a challenge, nor exchanged without the verifier that made it."""

    url = _started(owner, agent)
    without_pkce = url.split("&code_challenge=")[0]
    with httpx2.Client() as browser:
        browser.post(f"{google.base_url}/_control/login")
        refused = browser.get(without_pkce)
    assert "error=invalid_request" in refused.headers["location"]
    assert "Code+challenge+required" in refused.headers["location"]

    code = query_of(google.consent(url))["code"]
    stolen = google.control_client.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": "http://testserver/integrations/google/callback",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "code_verifier": "a-guessed-verifier-" + "x" * 40,
        },
    )
    assert stolen.status_code == 400
    assert stolen.json()["error"] == "invalid_grant"


def test_connect_refuses_a_capability_the_operator_switched_off(owner, agent, google, settings):
    settings.GOOGLE_CAPABILITIES = ["calendar"]

    response = owner.post(
        reverse("integrations:google-connect", args=[agent.pk]),
        {"capability": "gmail"},
        follow=True,
    )

    assert b"switched off by the operator" in response.content
    assert google.log("authorize") == []
    assert 'data-state="off"' in response.content.decode()


def test_a_state_older_than_ten_minutes_is_refused(owner, agent, google):
    url = _started(owner, agent)
    session = owner.session
    session[SESSION_KEY][0]["expires"] = time.time() - 1  # as if begun 10 minutes ago
    session.save()

    response = owner.get(callback_path(google.consent(url)))

    assert response.status_code == 400
    assert not GoogleIntegration.objects.exists()
    assert owner.session[SESSION_KEY] == []  # and it is gone


def test_connecting_another_google_account_revokes_the_first_ones_grant(
    connect, agent, google, django_capture_on_commit_callbacks
):
    connect("calendar", account="owner@gmail.example")
    first = GoogleIntegration.objects.get(agent=agent).token

    with django_capture_on_commit_callbacks(execute=True):
        connect("gmail", account="other@gmail.example")

    assert GoogleIntegration.objects.get(agent=agent).granted_scopes == {GMAIL}
    refused = google.refresh_at_google(first["refresh_token"])
    assert refused.json()["error"] == "invalid_grant"  # no grant left behind at Google
    assert "another account was connected" in " ".join(
        AgentEvent.objects.filter(agent=agent).values_list("reason", flat=True)
    )


def test_adding_a_service_on_the_same_account_keeps_the_grant_alive(
    connect, agent, google, django_capture_on_commit_callbacks
):
    connect("calendar")

    with django_capture_on_commit_callbacks(execute=True):
        connect("gmail")

    token = GoogleIntegration.objects.get(agent=agent).token
    assert google.log("revoke") == []
    assert google.refresh_at_google(token["refresh_token"]).status_code == 200
