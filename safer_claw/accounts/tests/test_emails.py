"""Account emails name the site from settings (SITE_NAME, SITE_DOMAIN), never the
request's Host header or an empty name."""

from __future__ import annotations

import pytest
from django.core import mail
from django.urls import reverse

from safer_claw.accounts.tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


def sign_up(client, captured, email: str):
    with captured(execute=True):
        response = client.post(
            reverse("account_signup"),
            {"email": email, "password1": PASSWORD, "password2": PASSWORD},
        )
    assert response.status_code == 302
    (message,) = mail.outbox
    return message


def test_the_sign_up_email_names_the_site_from_settings(
    client, settings, django_capture_on_commit_callbacks
):
    settings.SITE_NAME = "Acme Agents"
    settings.SITE_DOMAIN = "agents.acme.test"
    message = sign_up(client, django_capture_on_commit_callbacks, "erin@example.com")

    assert message.subject == "[Acme Agents] Please Confirm Your Email Address"
    lines = message.body.splitlines()
    assert lines[0] == "Hello from Acme Agents!"
    assert (
        "You're receiving this email because user erin@example.com has given your email "
        "address to register an account on agents.acme.test." in message.body
    )
    assert lines[-2:] == ["Thank you for using Acme Agents!", "agents.acme.test"]
    # The link still points where the person signed up (validated by ALLOWED_HOSTS).
    assert "http://testserver/accounts/confirm-email/" in message.body


def test_without_settings_the_email_says_safer_claw(client, django_capture_on_commit_callbacks):
    message = sign_up(client, django_capture_on_commit_callbacks, "frank@example.com")
    assert message.body.startswith("Hello from Safer-Claw!")
    assert "Hello from !" not in message.body
    assert message.subject.startswith("[Safer-Claw] ")
