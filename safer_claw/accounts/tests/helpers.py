"""Signing in the way people do: the login page, then the authenticator's code."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import time
from typing import Any

from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from safer_claw.accounts.tests.factories import PASSWORD, UserFactory


def totp(secret: str, at: float | None = None) -> str:
    """RFC 6238 (SHA-1, 30 s, 6 digits), written out so the tests check allauth."""
    counter = int((time.time() if at is None else at) // 30)
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    code = (struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{code:06d}"


def enable_totp(user: Any) -> str:
    """Give ``user`` an authenticator app, as if set up on the MFA page; returns its secret."""
    secret = generate_totp_secret()
    TOTP.activate(user, secret)
    return secret


def sign_in(client: Client, user: Any, *, totp_secret: str | None = None) -> None:
    """Sign in through allauth's login page (and its second step when ``totp_secret``)."""
    response = client.post(reverse("account_login"), {"login": user.email, "password": PASSWORD})
    if totp_secret is not None:
        assert response["Location"] == reverse("mfa_authenticate")
        response = client.post(reverse("mfa_authenticate"), {"code": totp(totp_secret)})
    assert response.status_code == 302, response.content.decode()[:500]
    # Drop the unread "Successfully signed in" notice (a cookie), so the next page a
    # test reads shows only the messages of what the test does.
    client.cookies.pop("messages", None)


def operator(*permissions: str, email: str = "ops@example.com") -> Any:
    """A staff user holding exactly ``permissions`` ("app_label.codename")."""
    user = UserFactory(email=email, is_staff=True)
    for permission in permissions:
        app_label, codename = permission.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user


def operator_client(*permissions: str, email: str = "ops@example.com") -> Client:
    """A browser signed in as an operator holding ``permissions``, second factor passed."""
    user = operator(*permissions, email=email)
    client = Client()
    sign_in(client, user, totp_secret=enable_totp(user))
    return client
