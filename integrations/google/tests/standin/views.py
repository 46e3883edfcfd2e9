"""Google's endpoints as the stand-in speaks them (see the package docstring)."""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth import get_user_model, login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from oauth2_provider.models import AccessToken, RefreshToken
from oauth2_provider.oauth2_backends import get_oauthlib_core
from oauth2_provider.settings import oauth2_settings
from oauth2_provider.views import AuthorizationView, RevokeTokenView, TokenView

CALENDAR = "https://www.googleapis.com/auth/calendar.events.readonly"
GMAIL = "https://www.googleapis.com/auth/gmail.readonly"
DRIVE = "https://www.googleapis.com/auth/drive.readonly"
GOOGLE_DOC = "application/vnd.google-apps.document"

_lock = threading.Lock()
# What the APIs serve, set by the test (/_control/reset), and what they were asked.
STORE: dict[str, Any] = {"calendar": [], "gmail": [], "drive": [], "options": {}}
LOG: list[dict[str, Any]] = []


def _log(request: HttpRequest, kind: str, **extra: Any) -> None:
    with _lock:
        LOG.append({"kind": kind, "method": request.method, "path": request.path, **extra})


# --- OAuth ------------------------------------------------------------------------------


class GoogleAuthorizationView(AuthorizationView):
    """DOT's consent screen, with Google's two twists: granular consent (the
    user may untick scopes; the form's ``granted_scopes`` says which stay ticked)
    and incremental authorization (with ``include_granted_scopes=true`` the grant
    also holds what the user granted this client before and has not revoked)."""

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        _log(request, "authorize", query=dict(request.GET.items()))
        return super().get(request, *args, **kwargs)

    def form_valid(self, form: Any) -> HttpResponse:
        if form.cleaned_data.get("allow"):
            scopes = set(form.cleaned_data.get("scope", "").split())
            if "granted_scopes" in self.request.POST:
                scopes &= set(self.request.POST["granted_scopes"].split())
            if self.request.GET.get("include_granted_scopes") == "true":
                scopes |= _granted_before(self.request.user, form.cleaned_data["client_id"])
            if not scopes:
                form.cleaned_data["allow"] = False  # nothing granted: access_denied
            form.cleaned_data["scope"] = " ".join(sorted(scopes))
        return super().form_valid(form)


def _granted_before(user: Any, client_id: str) -> set[str]:
    scopes: set[str] = set()
    live = RefreshToken.objects.filter(
        user=user, application__client_id=client_id, revoked__isnull=True
    ).select_related("access_token")
    for refresh_token in live:
        if refresh_token.access_token is not None:
            scopes |= set(refresh_token.access_token.scope.split())
    return scopes


class GoogleTokenView(TokenView):
    """DOT's token endpoint; on refresh it leaves the refresh token out of the
    answer, as Google does."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        grant_type = request.POST.get("grant_type", "")
        response = super().post(request, *args, **kwargs)
        body = json.loads(response.content or b"{}")
        _log(
            request,
            "token",
            grant_type=grant_type,
            status=response.status_code,
            error=body.get("error"),
            sent_refresh_token="refresh_token" in body and grant_type != "refresh_token",
            code_verifier_sent=bool(request.POST.get("code_verifier")),
        )
        if grant_type == "refresh_token" and response.status_code == 200:
            body.pop("refresh_token", None)
            response.content = json.dumps(body).encode()
            response["Content-Length"] = str(len(response.content))
        return response


class GoogleRevokeView(RevokeTokenView):
    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if STORE["options"].get("revoke_down"):
            _log(request, "revoke", status=503)
            return JsonResponse({"error": "backend_error"}, status=503)
        response = super().post(request, *args, **kwargs)
        _log(request, "revoke", status=response.status_code)
        return response


# --- The APIs ----------------------------------------------------------------------------


def _google_error(status: int, reason: str, message: str) -> JsonResponse:
    response = JsonResponse(
        {"error": {"code": status, "message": message, "errors": [{"reason": reason}]}},
        status=status,
    )
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="https://accounts.google.com/"'
    return response


def _authorize(request: HttpRequest, scope: str) -> JsonResponse | None:
    """None if the bearer token is live and holds ``scope``; else Google's refusal."""
    valid, oauth_request = get_oauthlib_core().verify_request(request, scopes=[])
    if not valid:
        return _google_error(401, "authError", "Request had invalid authentication credentials.")
    if not oauth_request.access_token.allow_scopes([scope]):
        return _google_error(
            403, "insufficientPermissions", "Request had insufficient authentication scopes."
        )
    return None


def _api(scope: str):
    def decorate(view):
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            _log(request, "api", query=list(request.GET.lists()))
            if request.method != "GET":
                return _google_error(405, "methodNotAllowed", "Only GET here.")
            refusal = _authorize(request, scope)
            return refusal or view(request, *args, **kwargs)

        return csrf_exempt(wrapper)

    return decorate


def _limit(request: HttpRequest, name: str, default: int, maximum: int) -> int:
    try:
        value = int(request.GET.get(name, default))
    except ValueError:
        value = default
    return max(1, min(value, maximum))


def _page(items: list[Any], limit: int) -> tuple[list[Any], dict[str, str]]:
    if STORE["options"].get("ignore_max_results"):
        return items, {}
    more = {"nextPageToken": f"page-{limit}"} if len(items) > limit else {}
    return items[:limit], more


def _moment(value: dict[str, str]) -> datetime:
    if "dateTime" in value:
        return datetime.fromisoformat(value["dateTime"].replace("Z", "+00:00"))
    return datetime.fromisoformat(value["date"]).replace(tzinfo=UTC)


@_api(CALENDAR)
def calendar_events(request: HttpRequest, calendar_id: str) -> HttpResponse:
    if calendar_id != "primary":
        return _google_error(404, "notFound", "Not Found")
    low = datetime.fromisoformat(request.GET["timeMin"]) if "timeMin" in request.GET else None
    high = datetime.fromisoformat(request.GET["timeMax"]) if "timeMax" in request.GET else None
    events = [
        event
        for event in STORE["calendar"]
        if (low is None or _moment(event["end"]) > low)
        and (high is None or _moment(event["start"]) < high)
    ]
    events.sort(key=lambda event: _moment(event["start"]))
    page, more = _page(events, _limit(request, "maxResults", 250, 2500))
    return JsonResponse({"kind": "calendar#events", "summary": "primary", "items": page, **more})


def _matches_mail(message: dict[str, Any], query: str) -> bool:
    headers = {h["name"].lower(): h["value"] for h in message["payload"].get("headers", [])}
    haystack = " ".join([headers.get("subject", ""), headers.get("from", ""), message["snippet"]])
    for word in query.split():
        if word == "is:unread":
            if "UNREAD" not in message["labelIds"]:
                return False
        elif ":" not in word and word.lower() not in haystack.lower():
            return False
    return True


@_api(GMAIL)
def gmail_list(request: HttpRequest, user: str) -> HttpResponse:
    if user != "me":
        return _google_error(403, "forbidden", "Delegation denied")
    query = request.GET.get("q", "")
    found = [m for m in STORE["gmail"] if _matches_mail(m, query)]
    page, more = _page(found, _limit(request, "maxResults", 100, 500))
    return JsonResponse(
        {
            "messages": [{"id": m["id"], "threadId": m["threadId"]} for m in page],
            "resultSizeEstimate": len(found),
            **more,
        }
    )


@_api(GMAIL)
def gmail_get(request: HttpRequest, user: str, message_id: str) -> HttpResponse:
    message = next((m for m in STORE["gmail"] if m["id"] == message_id), None)
    if user != "me" or message is None:
        return _google_error(404, "notFound", "Requested entity was not found.")
    form = request.GET.get("format", "full")
    if form == "full":
        return HttpResponse(json.dumps(message), content_type="application/json")
    if form != "metadata":
        return _google_error(400, "invalidArgument", "Unsupported format in this stand-in.")
    wanted = {name.lower() for name in request.GET.getlist("metadataHeaders")}
    headers = [
        h
        for h in message["payload"].get("headers", [])
        if not wanted or h["name"].lower() in wanted
    ]
    payload = {"mimeType": message["payload"].get("mimeType"), "headers": headers}
    return JsonResponse(
        {**{k: v for k, v in message.items() if k != "payload"}, "payload": payload}
    )


_FULLTEXT = re.compile(r"fullText contains '((?:[^'\\]|\\.)*)'")


def _file_metadata(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "content" and k != "trashed"}


@_api(DRIVE)
def drive_list(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "")
    match = _FULLTEXT.search(query)
    words = re.sub(r"\\(.)", r"\1", match.group(1)).lower() if match else ""
    files = [
        f
        for f in STORE["drive"]
        if (not words or words in f["name"].lower() or words in f.get("content", "").lower())
        and not ("trashed = false" in query and f.get("trashed"))
    ]
    page, more = _page(files, _limit(request, "pageSize", 100, 1000))
    return JsonResponse({"files": [_file_metadata(f) for f in page], **more})


def _drive_file(file_id: str) -> dict[str, Any] | None:
    return next((f for f in STORE["drive"] if f["id"] == file_id), None)


@_api(DRIVE)
def drive_get(request: HttpRequest, file_id: str) -> HttpResponse:
    item = _drive_file(file_id)
    if item is None:
        return _google_error(404, "notFound", f"File not found: {file_id}.")
    if request.GET.get("alt") == "media":
        if item["mimeType"].startswith("application/vnd.google-apps."):
            return _google_error(
                403, "fileNotDownloadable", "Only files with binary content can be downloaded."
            )
        return HttpResponse(item.get("content", "").encode(), content_type=item["mimeType"])
    return JsonResponse(_file_metadata(item))


@_api(DRIVE)
def drive_export(request: HttpRequest, file_id: str) -> HttpResponse:
    item = _drive_file(file_id)
    if item is None:
        return _google_error(404, "notFound", f"File not found: {file_id}.")
    if item["mimeType"] != GOOGLE_DOC or request.GET.get("mimeType") != "text/plain":
        return _google_error(403, "fileNotExportable", "Export only supports Docs Editors files.")
    # Google's text/plain export starts with a byte order mark.
    return HttpResponse(
        ("\ufeff" + item.get("content", "")).encode(), content_type="text/plain; charset=utf-8"
    )


# --- Control (the tests' side door) ------------------------------------------------------------


@csrf_exempt
def control(request: HttpRequest, action: str) -> HttpResponse:
    body = json.loads(request.body or b"{}") if request.method == "POST" else {}
    if action == "reset":
        # A fresh Google account: nothing granted before, nothing stored.
        _revoke_everything()
        oauth2_settings.ACCESS_TOKEN_EXPIRE_SECONDS = 3599
        body = {}
    if action in ("reset", "serve"):
        with _lock:
            STORE.update(
                calendar=body.get("calendar", []),
                gmail=body.get("gmail", []),
                drive=body.get("drive", []),
                options=body.get("options", {}),
            )
            LOG.clear()
        return JsonResponse({"ok": True})
    if action == "options":
        with _lock:
            STORE["options"].update(body)
        return JsonResponse({"ok": True})
    if action == "log":
        with _lock:
            return JsonResponse({"requests": list(LOG)})
    if action == "login":
        # The Google account the consent screen is shown to.
        account = body.get("account", "owner@gmail.example")
        user, _ = get_user_model().objects.get_or_create(username=account)
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return JsonResponse({"ok": True})
    if action == "settings":
        if "access_token_expire_seconds" in body:
            oauth2_settings.ACCESS_TOKEN_EXPIRE_SECONDS = int(body["access_token_expire_seconds"])
        return JsonResponse({"ok": True})
    if action == "revoke-grants":
        # The user removes the app at myaccount.google.com (or changes password):
        # every token of the grant dies; the next refresh gets invalid_grant.
        _revoke_everything()
        return JsonResponse({"ok": True})
    return JsonResponse({"error": "unknown action"}, status=404)


def _revoke_everything() -> None:
    for refresh_token in RefreshToken.objects.filter(revoked__isnull=True):
        refresh_token.revoke()
    AccessToken.objects.all().delete()
