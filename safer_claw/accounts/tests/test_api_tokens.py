"""API tokens: they expire, their owner lists and revokes them, and only a session
that recently proved the account's strongest factor can create one."""

from __future__ import annotations

import base64
import datetime as dt
import re

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from knox.models import AuthToken

from safer_claw.accounts.tests.factories import PASSWORD, UserFactory
from safer_claw.accounts.tests.helpers import enable_totp, sign_in, totp

pytestmark = pytest.mark.django_db

TOKENS = "/api/auth/tokens/"


def as_script(token: str) -> dict[str, str]:
    return {"Authorization": f"Token {token}"}


def mint(client: Client) -> dict:
    response = client.post(TOKENS)
    assert response.status_code == 201, response.content
    assert response["Cache-Control"] == "no-store"
    return response.json()


def works(token: str) -> bool:
    return Client().get("/api/me/", headers=as_script(token)).status_code == 200


def test_a_fresh_sign_in_mints_a_token_that_expires_in_30_days(client, alice):
    sign_in(client, alice)
    created = mint(client)

    assert created["token"].startswith("sc_api_")
    assert re.fullmatch(r"[0-9a-f]{16}", created["id"])
    assert created["prefix"] == created["token"][:15]
    expiry = parse_datetime(created["expiry"])
    assert abs(expiry - (timezone.now() + dt.timedelta(days=30))) < dt.timedelta(minutes=1)
    response = Client().get("/api/me/", headers=as_script(created["token"]))
    assert response.json()["email"] == alice.email


def test_the_lifetime_is_a_setting_and_an_expired_token_is_refused(client, alice, settings):
    settings.REST_KNOX = {**settings.REST_KNOX, "TOKEN_TTL": dt.timedelta(days=2)}
    sign_in(client, alice)
    created = mint(client)
    expiry = parse_datetime(created["expiry"])
    assert abs(expiry - (timezone.now() + dt.timedelta(days=2))) < dt.timedelta(minutes=1)

    AuthToken.objects.filter(user=alice).update(expiry=timezone.now() - dt.timedelta(seconds=1))
    assert not works(created["token"])
    assert client.get(TOKENS).json() == []


def test_the_owner_lists_tokens_without_their_secrets(client, alice, bob):
    sign_in(client, alice)
    first, second = mint(client), mint(client)
    bobs = Client()
    sign_in(bobs, bob)
    mint(bobs)

    for listing in (client.get(TOKENS), Client().get(TOKENS, headers=as_script(first["token"]))):
        assert listing.status_code == 200
        assert [entry["id"] for entry in listing.json()] == [second["id"], first["id"]]
        assert set(listing.json()[0]) == {"id", "prefix", "created", "expiry"}
        body = listing.content.decode()
        assert first["token"] not in body
        assert second["token"] not in body
        for digest in AuthToken.objects.values_list("digest", flat=True):
            assert digest not in body


def test_the_owner_revokes_one_token_then_all(client, alice, bob):
    sign_in(client, alice)
    first, second, third = mint(client), mint(client), mint(client)

    bobs = Client()
    sign_in(bobs, bob)
    response = bobs.delete(f"{TOKENS}{first['id']}/")  # not his: like no token at all
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert works(first["token"])

    script = Client(headers=as_script(second["token"]))
    assert script.delete(f"{TOKENS}{first['id']}/").status_code == 204
    assert not works(first["token"])
    assert works(second["token"])
    assert works(third["token"])
    assert client.delete(f"{TOKENS}{first['id']}/").status_code == 404  # gone already

    assert script.delete(TOKENS).status_code == 204
    assert not works(second["token"])
    assert not works(third["token"])


def test_a_script_revokes_the_token_it_uses(client, alice):
    sign_in(client, alice)
    token = mint(client)["token"]
    assert Client().post(f"{TOKENS}current/", headers=as_script(token)).status_code == 204
    assert not works(token)


def test_a_session_made_without_a_recent_sign_in_cannot_mint(client, alice):
    """A session from Django's own login (as admin's used to be) or an old one: the
    password (or an authenticator code) again first."""
    client.force_login(alice)
    response = client.post(TOKENS)
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "reauthentication_required"
    assert (
        error["reauthenticate_url"] == "/accounts/reauthenticate/?next=%2Faccounts%2Fapi-tokens%2F"
    )
    assert not AuthToken.objects.exists()

    client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    assert works(mint(client)["token"])


def test_a_sign_in_older_than_the_timeout_cannot_mint(client, alice, settings):
    sign_in(client, alice)
    settings.ACCOUNT_REAUTHENTICATION_TIMEOUT = 0  # as if five minutes had passed
    assert client.post(TOKENS).json()["error"]["code"] == "reauthentication_required"


def test_with_an_authenticator_only_its_code_mints(client, alice, bob):
    secret = enable_totp(alice)
    client.force_login(alice)
    client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    response = client.post(TOKENS)  # a fresh password is not the account's strongest factor
    assert response.status_code == 403
    assert response.json()["error"]["reauthenticate_url"].startswith(reverse("mfa_reauthenticate"))
    client.post(reverse("mfa_reauthenticate"), {"code": totp(secret)})
    assert works(mint(client)["token"])

    signed_in = Client()
    sign_in(signed_in, bob, totp_secret=enable_totp(bob))  # the code was just given
    assert works(mint(signed_in)["token"])


def test_an_operator_session_without_the_second_factor_cannot_mint(client):
    operator = UserFactory(email="ops@example.com", is_staff=True, is_superuser=True)
    enable_totp(operator)
    client.force_login(operator)  # the password-only session /admin/login/ used to make
    client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    response = client.post(TOKENS)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "second_factor_required"
    assert not AuthToken.objects.exists()


def test_a_token_cannot_mint_another(client, alice):
    sign_in(client, alice)
    token = mint(client)["token"]
    response = Client().post(TOKENS, headers=as_script(token))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "session_required"
    assert AuthToken.objects.count() == 1


def test_a_password_alone_cannot_mint(client, alice):
    basic = base64.b64encode(f"{alice.email}:{PASSWORD}".encode()).decode()
    response = client.post(TOKENS, headers={"Authorization": f"Basic {basic}"})
    assert response.status_code == 401
    assert not AuthToken.objects.exists()


def test_minting_from_a_session_needs_csrf(alice):
    signed_in = Client()
    sign_in(signed_in, alice)
    browser = Client(enforce_csrf_checks=True)
    browser.cookies = signed_in.cookies  # the same session, from a page that sends no token
    response = browser.post(TOKENS)
    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]["message"]


def test_the_tokens_page_creates_shows_once_and_revokes(client, alice):
    page = reverse("account_api_tokens")
    sign_in(client, alice)
    assert "You have no API tokens." in client.get(page).content.decode()

    response = client.post(page, {"action": "create"})
    assert response["Cache-Control"] == "no-store"
    token = re.search(r'id="new-token-value">(sc_api_[0-9a-f]+)<', response.content.decode())[1]
    assert works(token)
    listing = client.get(page).content.decode()
    assert token[:15] in listing
    assert token not in listing

    (entry,) = client.get(TOKENS).json()
    client.post(page, {"action": "revoke", "token_id": entry["id"]})
    assert not works(token)


def test_the_tokens_page_asks_for_the_code_then_creates_the_token(client, alice):
    secret = enable_totp(alice)
    client.force_login(alice)
    page = reverse("account_api_tokens")

    response = client.post(page, {"action": "create"})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("mfa_reauthenticate"))
    assert not AuthToken.objects.exists()
    # The code given, allauth replays the "create" and the new token is on the page.
    response = client.post(response["Location"], {"code": totp(secret)})
    token = re.search(r'id="new-token-value">(sc_api_[0-9a-f]+)<', response.content.decode())[1]
    assert works(token)
