"""Operators sign in through allauth (throttled, second factor) and act only from a
session that passed a second factor; staff without one can only set it up."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client
from django.urls import reverse

from safer_claw.accounts.tests.factories import PASSWORD, UserFactory
from safer_claw.accounts.tests.helpers import enable_totp, sign_in, totp

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(db):
    return UserFactory(email="ops@example.com", is_staff=True, is_superuser=True)


def with_next(url_name: str, next_url: str) -> str:
    return f"{reverse(url_name)}?{urlencode({'next': next_url})}"


def test_admin_login_sends_people_to_the_sign_in_page(client):
    response = client.get("/admin/login/?next=/admin/")
    assert response.status_code == 302
    assert response["Location"] == with_next("account_login", "/admin/")
    assert client.get("/admin/")["Location"].startswith("/admin/login/")


def test_a_password_posted_to_admin_login_signs_no_one_in(client, staff):
    """No sign-in without allauth's throttle and second step: the form is gone."""
    for _ in range(20):
        response = client.post(
            "/admin/login/?next=/admin/", {"username": staff.email, "password": PASSWORD}
        )
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("account_login"))
    assert "_auth_user_id" not in client.session
    assert client.get("/admin/").status_code == 302


def test_admin_sign_in_is_throttled_like_every_sign_in(staff):
    attacker = Client(REMOTE_ADDR="203.0.113.66")
    login = with_next("account_login", "/admin/")
    pages = [
        attacker.post(login, {"login": staff.email, "password": f"guess-{n}"}).content.decode()
        for n in range(6)
    ]
    assert ["Too many failed login attempts" in page for page in pages] == [False] * 5 + [True]


def test_staff_without_a_second_factor_can_only_set_one_up(client, staff, alice):
    sign_in(client, staff)  # the password is right; the account has no authenticator
    setup = reverse("mfa_activate_totp")
    for path in [
        "/admin/",
        "/admin/accounts/user/",
        "/dashboard/",
        f"/admin/accounts/user/{alice.pk}/change/",
    ]:
        response = client.get(path)
        assert response.status_code == 302, path
        assert response["Location"] == f"{setup}?{urlencode({'next': path})}"
    # Posting an admin action is refused the same way, before admin sees it.
    response = client.post(
        "/admin/accounts/user/", {"action": "delete_selected", "_selected_action": [str(alice.pk)]}
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    # The API too (a session could otherwise mint a token).
    response = client.get("/api/me/")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "second_factor_required"
    assert client.post("/api/auth/tokens/").status_code == 403

    # Setting one up: the password again, then the app's code.
    assert client.get(setup)["Location"].startswith(reverse("account_reauthenticate"))
    client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    secret = client.get(setup).context["form"].secret
    assert client.post(setup, {"code": totp(secret)}).status_code == 302
    # The session confirms the new factor once, then admin opens.
    response = client.get("/admin/")
    assert response["Location"] == with_next("mfa_reauthenticate", "/admin/")
    response = client.post(with_next("mfa_reauthenticate", "/admin/"), {"code": totp(secret)})
    assert response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_staff_with_a_second_factor_signs_in_with_it_and_reaches_admin(client, staff):
    secret = enable_totp(staff)
    response = client.post(
        with_next("account_login", "/admin/"), {"login": staff.email, "password": PASSWORD}
    )
    assert response["Location"] == reverse("mfa_authenticate")
    assert client.get("/admin/").status_code == 302  # the password alone: not in
    response = client.post(reverse("mfa_authenticate"), {"code": totp(secret)})
    assert response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_a_staff_session_made_outside_allauth_must_prove_the_factor(client, staff):
    """A session from Django's own login (as /admin/login/ made) passed no second step."""
    enable_totp(staff)
    client.force_login(staff)
    response = client.get("/admin/")
    assert response["Location"] == with_next("mfa_reauthenticate", "/admin/")
    assert client.get("/api/me/").status_code == 403


def test_people_who_are_not_staff_are_not_asked_for_a_second_factor(client, alice):
    sign_in(client, alice)
    assert client.get("/dashboard/").status_code == 200
    assert client.get("/admin/").status_code == 302  # and admin stays closed to them


def test_the_gate_holds_under_asgi_too(staff, alice):
    """uvicorn serves Django as ASGI: the middleware's async path is the one production runs."""

    async def get(user, path: str):
        client = AsyncClient()
        await client.aforce_login(user)
        return await client.get(path)

    response = async_to_sync(get)(staff, "/admin/")
    assert response.status_code == 302
    assert response["Location"] == with_next("mfa_activate_totp", "/admin/")
    assert "default-src 'self'" in response["Content-Security-Policy"]
    response = async_to_sync(get)(alice, "/dashboard/")
    assert response.status_code == 200
    assert "frame-ancestors 'none'" in response["Content-Security-Policy"]
