"""Operators act only from a session that passed a second factor.

A staff user (or superuser) whose session has not proved an authenticator code
is sent to set one up, or to confirm it, and reaches nothing else: not admin,
not the dashboard, not the API. allauth asks for the code at every sign-in of
an account that has one, so this gate is met once per session.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import Resolver404, resolve, reverse
from django.utils.decorators import sync_and_async_middleware

from safer_claw.accounts.selectors import has_second_factor, session_passed_second_factor
from safer_claw.api import error_response
from safer_claw.views import JSON_PREFIXES

# What such a session may still reach: setting up an authenticator (allauth asks
# for the password again first), confirming one, and signing out.
SETUP_URL_NAMES = frozenset(
    {"account_reauthenticate", "mfa_activate_totp", "mfa_reauthenticate", "account_logout"}
)


@sync_and_async_middleware
def StaffSecondFactorMiddleware(get_response: Any) -> Any:
    if iscoroutinefunction(get_response):

        async def async_middleware(request: HttpRequest) -> HttpResponse:
            user = await request.auser()
            if user.is_staff or user.is_superuser:
                refusal = await sync_to_async(staff_refusal)(request)
                if refusal is not None:
                    return refusal
            return await get_response(request)

        return async_middleware

    def middleware(request: HttpRequest) -> HttpResponse:
        if request.user.is_staff or request.user.is_superuser:
            refusal = staff_refusal(request)
            if refusal is not None:
                return refusal
        return get_response(request)

    return middleware


def staff_refusal(request: HttpRequest) -> HttpResponse | None:
    """None when this operator's request may go on; otherwise where to go instead."""
    if session_passed_second_factor(request) or _url_name(request) in SETUP_URL_NAMES:
        return None
    if request.path_info.startswith(JSON_PREFIXES):
        return error_response(
            403,
            "second_factor_required",
            "Staff accounts must sign in with an authenticator code first.",
        )
    if has_second_factor(request.user):
        target = reverse("mfa_reauthenticate")
        messages.warning(request, "Operators confirm their authenticator code first.")
    else:
        target = reverse("mfa_activate_totp")
        messages.warning(request, "Operators need an authenticator app: set one up to go on.")
    return HttpResponseRedirect(f"{target}?{urlencode({'next': request.get_full_path()})}")


def _url_name(request: HttpRequest) -> str | None:
    try:
        return resolve(request.path_info).url_name
    except Resolver404:
        return None
