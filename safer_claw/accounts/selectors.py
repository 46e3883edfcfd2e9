"""What a session has proved: a second factor, a recent sign-in."""

from __future__ import annotations

import time
from typing import Any

from allauth.account.authentication import get_authentication_records
from allauth.mfa.models import Authenticator
from allauth.mfa.utils import is_mfa_enabled
from django.conf import settings
from django.http import HttpRequest


def has_second_factor(user: Any) -> bool:
    """Whether ``user`` has an authenticator app (TOTP) set up."""
    return is_mfa_enabled(user, types=[Authenticator.Type.TOTP])


def session_passed_second_factor(request: HttpRequest) -> bool:
    """Whether this session's user has a second factor and the session proved it.

    allauth records every step of a sign-in (and every re-authentication) in the
    session; a session made any other way (Django's own login, a forged or
    pre-MFA session) has no "mfa" step and does not count.
    """
    records = get_authentication_records(request, request.user)
    return any(record.get("method") == "mfa" for record in records) and has_second_factor(
        request.user
    )


def seconds_since_last_authentication(request: HttpRequest) -> float | None:
    """Seconds since this session last signed in or re-authenticated through
    allauth (password, emailed code or authenticator code); None if it never did."""
    records = get_authentication_records(request, request.user)
    if not records:
        return None
    return time.time() - max(record["at"] for record in records)


def authenticated_recently(request: HttpRequest) -> bool:
    """Signed in or re-authenticated within ACCOUNT_REAUTHENTICATION_TIMEOUT."""
    elapsed = seconds_since_last_authentication(request)
    return elapsed is not None and elapsed < settings.ACCOUNT_REAUTHENTICATION_TIMEOUT
