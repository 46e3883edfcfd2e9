"""What a session has proved (a second factor, a recent sign-in), and a user's API tokens."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from allauth.account.authentication import get_authentication_records
from allauth.mfa.models import Authenticator
from allauth.mfa.utils import is_mfa_enabled
from django.conf import settings
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone
from knox.models import AuthToken

API_TOKEN_ID_LENGTH = 16


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


def may_mint_api_token(request: HttpRequest) -> bool:
    """Whether this session may create an API token now.

    A token is a bearer credential that outlives the session and skips the
    second factor whenever it is used, so creating one must prove, recently
    (ACCOUNT_REAUTHENTICATION_TIMEOUT), the strongest factor the account has:
    an authenticator code if it has one, else the password (or an emailed code).
    A session alone, however it was made, is not enough.
    """
    records = get_authentication_records(request, request.user)
    if has_second_factor(request.user):
        records = [record for record in records if record.get("method") == "mfa"]
    if not records:
        return False
    elapsed = time.time() - max(record["at"] for record in records)
    return elapsed < settings.ACCOUNT_REAUTHENTICATION_TIMEOUT


@dataclass(frozen=True)
class ApiTokenInfo:
    """What an owner may see of one of their API tokens: never the token itself."""

    id: str
    prefix: str
    created: dt.datetime
    expiry: dt.datetime | None


def api_token_info(token: AuthToken) -> ApiTokenInfo:
    # The id is the start of the token's SHA-512 digest: stable, unique enough
    # among one user's tokens, and no help in guessing the token.
    return ApiTokenInfo(
        id=token.digest[:API_TOKEN_ID_LENGTH],
        prefix=token.token_key,
        created=token.created,
        expiry=token.expiry,
    )


def live_api_tokens(*, user: Any) -> list[ApiTokenInfo]:
    """``user``'s API tokens that have not expired, newest first."""
    tokens = AuthToken.objects.filter(user=user).filter(
        Q(expiry__isnull=True) | Q(expiry__gt=timezone.now())
    )
    return [api_token_info(token) for token in tokens.order_by("-created")]
