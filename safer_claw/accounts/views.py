"""The API tokens page: list, create (shown once) and revoke the owner's tokens."""

from __future__ import annotations

from allauth.core.exceptions import ReauthenticationRequired
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from safer_claw.accounts.selectors import live_api_tokens, may_mint_api_token
from safer_claw.accounts.services import mint_api_token, revoke_all_api_tokens, revoke_api_token


@login_required
@require_http_methods(["GET", "POST"])
def api_tokens(request: HttpRequest) -> HttpResponse:
    action = request.POST.get("action") if request.method == "POST" else None
    if action == "create":
        if not may_mint_api_token(request):
            # allauth asks for the authenticator code (or password), then replays this POST.
            raise ReauthenticationRequired()
        created, token = mint_api_token(user=request.user)
        response = _page(request, created=created, token=token)
        response["Cache-Control"] = "no-store"  # the token is in this page, and only here
        return response
    if action == "revoke":
        if revoke_api_token(user=request.user, token_id=request.POST.get("token_id", "")):
            messages.success(request, "The token was revoked.")
        else:
            messages.error(request, "No such token.")
        return redirect("account_api_tokens")
    if action == "revoke_all":
        count = revoke_all_api_tokens(user=request.user)
        messages.success(request, f"{count} token(s) revoked.")
        return redirect("account_api_tokens")
    return _page(request)


def _page(request: HttpRequest, **extra: object) -> HttpResponse:
    context = {
        "tokens": live_api_tokens(user=request.user),
        "ttl_days": settings.API_TOKEN_TTL_DAYS,
        **extra,
    }
    return render(request, "account/api_tokens.html", context)
