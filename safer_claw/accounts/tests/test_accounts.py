"""Sign-up with email verification, TOTP, the API's error shape."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.urls import reverse

from safer_claw.accounts.models import User
from safer_claw.accounts.tests.factories import PASSWORD
from safer_claw.accounts.tests.helpers import totp

pytestmark = pytest.mark.django_db


def test_signup_sends_a_verification_email_and_the_link_signs_in(
    client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("account_signup"),
            {"email": "carol@example.com", "password1": PASSWORD, "password2": PASSWORD},
        )
    assert response.status_code == 302
    assert response["Location"] == reverse("account_email_verification_sent")
    assert client.get(reverse("dashboard:home")).status_code == 302  # not signed in yet

    (message,) = mail.outbox
    assert message.to == ["carol@example.com"]
    link = re.search(r"http://testserver(/accounts/confirm-email/\S+)", message.body).group(1)
    response = client.post(link)
    assert response.status_code == 302
    assert client.get(reverse("dashboard:home")).status_code == 200
    assert User.objects.get(email="carol@example.com").emailaddress_set.get().verified


def test_unverified_account_cannot_sign_in(client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            reverse("account_signup"),
            {"email": "dave@example.com", "password1": PASSWORD, "password2": PASSWORD},
        )
    client.logout()
    response = client.post(
        reverse("account_login"), {"login": "dave@example.com", "password": PASSWORD}
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("account_email_verification_sent")
    assert client.get(reverse("dashboard:home")).status_code == 302


def test_totp_can_be_activated_and_is_then_required_at_login(client, alice):
    response = client.post(reverse("account_login"), {"login": alice.email, "password": PASSWORD})
    assert response.status_code == 302
    # Turning on a second factor asks for the password again first.
    assert client.get(reverse("mfa_activate_totp"))["Location"].startswith(
        reverse("account_reauthenticate")
    )
    client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    page = client.get(reverse("mfa_activate_totp"))
    assert page.status_code == 200
    secret = page.context["form"].secret
    assert secret in page.content.decode()  # shown to the person, to type into their app

    response = client.post(reverse("mfa_activate_totp"), {"code": totp(secret)})
    assert response.status_code == 302
    stored = alice.authenticator_set.get(type="totp").data["secret"]
    assert stored.startswith("scv1:")  # the TOTP secret is sealed at rest too
    assert secret not in stored

    client.logout()
    response = client.post(reverse("account_login"), {"login": alice.email, "password": PASSWORD})
    assert response["Location"] == reverse("mfa_authenticate")
    assert client.get(reverse("dashboard:home")).status_code == 302  # password alone: not in

    response = client.post(reverse("mfa_authenticate"), {"code": totp(secret)})
    assert response.status_code == 302
    assert client.get(reverse("dashboard:home")).status_code == 200


def test_api_refuses_anonymous_with_401_in_the_error_shape(client):
    response = client.get("/api/me/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert "WWW-Authenticate" in response


def test_login_page_and_admin_are_served(client, admin_client):
    assert client.get(reverse("account_login")).status_code == 200
    assert admin_client.get("/admin/").status_code == 200
    assert client.get("/").status_code == 302


def test_unknown_api_path_is_a_json_404(client):
    response = client.get("/api/nothing-here/")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Not found."}}
