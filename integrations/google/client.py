"""The one module that talks to Google.

OAuth (the authorization URL with PKCE, the code exchange, refresh, revoke)
goes through Authlib's OAuth 2 client; the Calendar, Gmail and Drive APIs are
plain GETs on one pooled HTTP client, signed with Authlib's bearer-token auth.
No discovery document is fetched: each tool uses one or two documented
endpoints, and every base URL comes from settings (tests point them at local
stand-ins). Google's failures leave this module as :class:`GoogleFailed`,
whose ``permanent`` flag says whether trying again can help.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any
from urllib.parse import quote

import httpx2
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import OAuth2Auth, OAuth2Client
from django.conf import settings

# Read at most this much of one API response before parsing it: a message or
# a listing bigger than this is refused rather than held in memory.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024


class GoogleFailed(Exception):
    """A call to Google failed; ``permanent`` says whether a retry can help.

    The message is ours (a status and what was being done), never a body
    from Google, so it is safe to show the agent or the owner.
    """

    def __init__(self, message: str, *, permanent: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status


class InvalidGrant(GoogleFailed):
    """The refresh token (or code) is no longer good: the owner must connect again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True, status=400)


class TooLarge(GoogleFailed):
    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


def _oauth_client(**kwargs: Any) -> OAuth2Client:
    return OAuth2Client(
        client_id=settings.GOOGLE_CLIENT_ID,
        client_secret=settings.GOOGLE_CLIENT_SECRET,
        # Method names, not secrets.
        token_endpoint_auth_method="client_secret_post",  # noqa: S106
        revocation_endpoint_auth_method="client_secret_post",
        code_challenge_method="S256",
        timeout=settings.GOOGLE_TIMEOUT_SECONDS,
        **kwargs,
    )


def authorization_url(
    *, scopes: list[str], state: str, code_verifier: str, redirect_uri: str, consent: bool
) -> str:
    """Where to send the owner's browser to grant ``scopes``.

    Incremental: Google adds what was granted before (``include_granted_scopes``).
    ``consent`` asks Google to show its consent screen again, which is how a
    new refresh token is obtained when none is held.
    """
    extra = {"prompt": "consent"} if consent else {}
    with _oauth_client(redirect_uri=redirect_uri) as client:
        url, _ = client.create_authorization_url(
            settings.GOOGLE_AUTH_URL,
            state=state,
            code_verifier=code_verifier,
            scope=" ".join(scopes),
            access_type="offline",
            include_granted_scopes="true",
            **extra,
        )
    return url


def _token_dict(token: dict[str, Any]) -> dict[str, Any]:
    """The fields we keep of a token response (Authlib adds ``expires_at``)."""
    expires_at = token.get("expires_at")
    if expires_at is None and token.get("expires_in") is not None:
        expires_at = time.time() + float(token["expires_in"])
    return {
        "access_token": token["access_token"],
        "token_type": token.get("token_type", "Bearer"),
        "expires_at": int(expires_at) if expires_at is not None else None,
        "refresh_token": token.get("refresh_token"),
        "scope": token.get("scope"),
    }


def _calling_token_endpoint(action: str, call: Any) -> dict[str, Any]:
    try:
        token = call()
    except OAuthError as exc:
        if exc.error == "invalid_grant":
            raise InvalidGrant(f"{action}: Google answered invalid_grant") from exc
        raise GoogleFailed(f"{action}: Google answered {exc.error}", permanent=True) from exc
    except httpx2.HTTPStatusError as exc:
        status = exc.response.status_code
        raise GoogleFailed(
            f"{action}: Google answered HTTP {status}", permanent=status < 500, status=status
        ) from exc
    except (httpx2.HTTPError, ValueError) as exc:
        raise GoogleFailed(f"{action}: Google could not be reached", permanent=False) from exc
    if not token.get("access_token"):
        raise GoogleFailed(f"{action}: Google sent no access token", permanent=False)
    return _token_dict(token)


def exchange_code(*, code: str, code_verifier: str, redirect_uri: str) -> dict[str, Any]:
    """The tokens for an authorization code (with the PKCE verifier that began it)."""
    with _oauth_client(redirect_uri=redirect_uri) as client:
        return _calling_token_endpoint(
            "connect",
            lambda: client.fetch_token(
                settings.GOOGLE_TOKEN_URL, code=code, code_verifier=code_verifier
            ),
        )


def refresh_access_token(*, refresh_token: str) -> dict[str, Any]:
    """A new access token for a refresh token.

    Google sends no new refresh token on refresh; Authlib then keeps the one
    given, so the result always holds the refresh token to store.
    """
    with _oauth_client() as client:
        return _calling_token_endpoint(
            "refresh", lambda: client.refresh_token(settings.GOOGLE_TOKEN_URL, refresh_token)
        )


def revoke_token(*, token: str) -> None:
    """Revoke a grant at Google (a refresh token revokes its access tokens too).

    A token Google no longer knows (``invalid_token``) counts as revoked.
    """
    try:
        with _oauth_client() as client:
            response = client.revoke_token(
                settings.GOOGLE_REVOKE_URL,
                token=token,
                token_type_hint="refresh_token",  # noqa: S106
            )
    except httpx2.HTTPError as exc:
        raise GoogleFailed("revoke: Google could not be reached", permanent=False) from exc
    if response.status_code == 200:
        return
    if response.status_code == 400 and _oauth_error(response) in {"invalid_token", "invalid_grant"}:
        return
    raise GoogleFailed(
        f"revoke: Google answered HTTP {response.status_code}",
        permanent=False,  # the token is still good at Google: keep trying
        status=response.status_code,
    )


def _oauth_error(response: httpx2.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error") if isinstance(body, dict) else None


# --- The APIs ----------------------------------------------------------------------------


def api_url(api: str, *segments: str) -> str:
    """The URL of an API resource; each segment (an id the agent gave) is escaped."""
    base = {
        "calendar": settings.GOOGLE_CALENDAR_API_URL,
        "gmail": settings.GOOGLE_GMAIL_API_URL,
        "drive": settings.GOOGLE_DRIVE_API_URL,
    }[api]
    return "/".join([base, *(quote(segment, safe="") for segment in segments)])


@functools.lru_cache(maxsize=4)
def _api_client(timeout: float) -> httpx2.Client:
    # One pool per process, shared by threads: keep-alive to Google across
    # tool calls. No redirects are followed.
    return httpx2.Client(
        timeout=timeout, limits=httpx2.Limits(max_connections=32, max_keepalive_connections=16)
    )


def get(
    url: str, *, access_token: str, params: dict[str, Any] | None = None, max_bytes: int
) -> tuple[bytes, bool]:
    """GET ``url`` with the access token; returns the body (at most ``max_bytes``)
    and whether there was more. Any status but 200 raises GoogleFailed."""
    client = _api_client(settings.GOOGLE_TIMEOUT_SECONDS)
    auth = OAuth2Auth({"access_token": access_token, "token_type": "Bearer"})
    try:
        with client.stream("GET", url, params=params, auth=auth) as response:
            if response.status_code != 200:
                raise _api_failure(response.status_code)
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    return bytes(body[:max_bytes]), True
            return bytes(body), False
    except httpx2.HTTPError as exc:
        raise GoogleFailed("Google could not be reached", permanent=False) from exc


def get_json(url: str, *, access_token: str, params: dict[str, Any] | None = None) -> Any:
    body, more = get(url, access_token=access_token, params=params, max_bytes=MAX_RESPONSE_BYTES)
    if more:
        raise TooLarge(f"Google's answer is larger than {MAX_RESPONSE_BYTES // 2**20} MiB")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise GoogleFailed("Google's answer was not JSON", permanent=False) from exc


def _api_failure(status: int) -> GoogleFailed:
    if status == 401:
        return GoogleFailed("Google did not accept the access token", permanent=False, status=401)
    if status == 403:
        return GoogleFailed(
            "Google refused: the connection lacks the permission for this",
            permanent=True,
            status=403,
        )
    if status == 404:
        return GoogleFailed("Not found at Google", permanent=True, status=404)
    if status == 429 or status >= 500:
        return GoogleFailed(
            f"Google is busy (HTTP {status}); try later", permanent=False, status=status
        )
    return GoogleFailed(
        f"Google refused the request (HTTP {status})", permanent=True, status=status
    )
