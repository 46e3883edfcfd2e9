"""The Google tools an agent may call (DESIGN.md trust boundary 3).

Each is read-only, takes arguments its JSON Schema has already validated (the
tool endpoint checks them), performs one or a few GETs with the agent's stored
token, and returns a bounded result: a capped number of items, capped text,
and at most ``RESULT_MAX_BYTES`` of JSON. ``meta`` carries counts for the
run's steps, never content. The agent never sees a token or a URL.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import wraps
from typing import Any, TypeVar

from django.conf import settings
from django.utils import timezone

from agents.models import Agent
from agents.tools import Tool, ToolCall, ToolError, ToolResult, register
from integrations.google import client, services
from integrations.google.capabilities import CALENDAR, DRIVE, GMAIL, Capability
from integrations.google.client import GoogleFailed, TooLarge
from integrations.google.content import (
    clip,
    cut,
    decode_text,
    fit_items,
    fit_text,
    html_to_text,
    json_size,
    mail_body,
    mail_headers,
    unescape_snippet,
)

# --- Caps (README: "Google tools") -------------------------------------------------------
RESULT_MAX_BYTES = 64 * 1024  # the JSON of any one result
TEXT_MAX_CHARS = 16_000  # a mail body or a file's text
FIELD_MAX_CHARS = 300  # a subject, name, summary, header, snippet
DESCRIPTION_MAX_CHARS = 2_000  # an event's description
MAX_EVENTS = 50
MAX_MESSAGES = 25
MAX_FILES = 25
MAX_LISTED = 20  # attendees of an event, attachments of a message
MAX_RANGE = timedelta(days=31)
# Drive files read as text; anything else is returned as metadata only.
GOOGLE_DOC = "application/vnd.google-apps.document"
TEXT_FILE_TYPES = frozenset({"text/plain", "text/markdown", "text/csv"})

# --- Schemas -------------------------------------------------------------------------------
# End of the string. Not "$": in Python's re (which jsonschema uses) "$" also
# matches before a final newline, so "id\n" would pass. Valid ECMA-262 too.
_END = r"(?![\s\S])"
_RFC3339 = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})" + _END
)
_NO_CONTROL = r"^[^\x00-\x1f\x7f]*" + _END
_ID = r"^[A-Za-z0-9_-]{1,128}" + _END


def _max_results(maximum: int, default: int) -> dict[str, Any]:
    return {
        "type": "integer",
        "minimum": 1,
        "maximum": maximum,
        "default": default,
        "description": f"How many to return (1 to {maximum}, default {default}).",
    }


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


LIST_EVENTS_PARAMETERS = _object(
    {
        "time_min": {
            "type": "string",
            "pattern": _RFC3339,
            "maxLength": 40,
            "description": "Start of the range, RFC 3339 with an offset, e.g. "
            "2026-11-28T00:00:00Z (default: now).",
        },
        "time_max": {
            "type": "string",
            "pattern": _RFC3339,
            "maxLength": 40,
            "description": "End of the range (default: 24 hours after time_min; "
            "at most 31 days after it).",
        },
        "max_results": _max_results(MAX_EVENTS, 20),
    },
    required=[],
)
GMAIL_SEARCH_PARAMETERS = _object(
    {
        "query": {
            "type": "string",
            "minLength": 1,
            "maxLength": 500,
            "pattern": _NO_CONTROL,
            "description": "A Gmail search, e.g. 'is:unread newer_than:1d' or 'from:anna invoice'.",
        },
        "max_results": _max_results(MAX_MESSAGES, 10),
    },
    required=["query"],
)
GMAIL_GET_PARAMETERS = _object(
    {"id": {"type": "string", "pattern": _ID, "description": "A message id from gmail.search."}},
    required=["id"],
)
DRIVE_SEARCH_PARAMETERS = _object(
    {
        "query": {
            "type": "string",
            "minLength": 1,
            "maxLength": 200,
            "pattern": _NO_CONTROL,
            "description": "Words to look for in file names and contents.",
        },
        "max_results": _max_results(MAX_FILES, 10),
    },
    required=["query"],
)
DRIVE_GET_PARAMETERS = _object(
    {"id": {"type": "string", "pattern": _ID, "description": "A file id from drive.search."}},
    required=["id"],
)


# --- One call's access to Google ------------------------------------------------------------

T = TypeVar("T")


class _Google:
    """One tool call's use of the agent's connection: a fresh token, a retry after
    a refresh if Google refuses it, and a count of the calls made."""

    def __init__(self, agent: Agent, capability: Capability) -> None:
        integration = services.usable_integration(agent=agent, capability=capability)
        self.integration = services.fresh_integration(
            integration=integration, margin=settings.GOOGLE_REFRESH_MARGIN_SECONDS
        )
        self.calls = 0
        self.refreshed = False

    def json(self, url: str, params: Any = None) -> dict[str, Any]:
        answer = self._with_token(
            lambda token: client.get_json(url, access_token=token, params=params)
        )
        if not isinstance(answer, dict):
            raise GoogleFailed("Google's answer had an unexpected shape", permanent=False)
        return answer

    def body(self, url: str, params: Any, *, max_bytes: int) -> tuple[bytes, bool]:
        return self._with_token(
            lambda token: client.get(url, access_token=token, params=params, max_bytes=max_bytes)
        )

    def _with_token(self, fetch: Callable[[str], T]) -> T:
        self.calls += 1
        try:
            return fetch(self.integration.access_token)
        except GoogleFailed as exc:
            if exc.status != 401 or self.refreshed:
                raise
        # Refused before its expiry (revoked at Google?): a refresh says whether
        # the grant still stands, and marks the connection broken if not.
        self.refreshed = True
        self.integration = services.refresh_integration(integration=self.integration)
        self.calls += 1
        return fetch(self.integration.access_token)


def _tool_errors(perform: Callable[[ToolCall], ToolResult]) -> Callable[[ToolCall], ToolResult]:
    """Our failures as ToolError, whose message the agent may read."""

    @wraps(perform)
    def wrapper(call: ToolCall) -> ToolResult:
        try:
            return perform(call)
        except services.Unavailable as exc:
            raise ToolError(str(exc)) from exc
        except GoogleFailed as exc:
            raise ToolError(str(exc), permanent=exc.permanent) from exc

    return wrapper


def _items(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _count(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --- calendar.list_events --------------------------------------------------------------------


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ToolError(f"{value!r} is not an RFC 3339 date-time.") from exc


def _when(value: Any) -> str:
    value = value if isinstance(value, dict) else {}
    return clip(value.get("dateTime") or value.get("date"), 40)


def _event(item: dict[str, Any]) -> dict[str, Any]:
    attendees = _items(item.get("attendees"))
    description, _ = cut(html_to_text(str(item.get("description") or "")), DESCRIPTION_MAX_CHARS)
    organizer = item.get("organizer") if isinstance(item.get("organizer"), dict) else {}
    return {
        "id": clip(item.get("id"), 128),
        "summary": clip(item.get("summary"), FIELD_MAX_CHARS),
        "start": _when(item.get("start")),
        "end": _when(item.get("end")),
        "all_day": isinstance(item.get("start"), dict) and "date" in item["start"],
        "location": clip(item.get("location"), FIELD_MAX_CHARS),
        "description": description,
        "organizer": clip(organizer.get("email"), FIELD_MAX_CHARS),
        "attendees": [clip(a.get("email"), FIELD_MAX_CHARS) for a in attendees[:MAX_LISTED]],
        "attendee_count": len(attendees),
        "status": clip(item.get("status"), 20),
    }


@_tool_errors
def list_events(call: ToolCall) -> ToolResult:
    args = call.arguments
    time_min = _parse_time(args.get("time_min")) or timezone.now()
    time_max = _parse_time(args.get("time_max")) or time_min + timedelta(days=1)
    if time_max <= time_min:
        raise ToolError("time_max must be after time_min.")
    if time_max - time_min > MAX_RANGE:
        raise ToolError("The range may span at most 31 days.")
    limit = int(args.get("max_results", 20))
    google = _Google(call.agent, CALENDAR)
    answer = google.json(
        client.api_url("calendar", "calendars", "primary", "events"),
        {
            "timeMin": time_min.isoformat(),
            "timeMax": time_max.isoformat(),
            "maxResults": limit,
            "singleEvents": "true",
            "orderBy": "startTime",
        },
    )
    found = _items(answer.get("items"))
    events, dropped = fit_items(
        [_event(item) for item in found[:limit]], max_bytes=RESULT_MAX_BYTES - 256
    )
    truncated = dropped or len(found) > limit or bool(answer.get("nextPageToken"))
    return ToolResult(
        data={
            "time_min": time_min.isoformat(),
            "time_max": time_max.isoformat(),
            "events": events,
            "truncated": truncated,
        },
        meta={"count": len(events), "truncated": truncated, "google_calls": google.calls},
    )


# --- gmail.search and gmail.get_message ---------------------------------------------------------

_SUMMARY_HEADERS = ("From", "To", "Subject", "Date")


def _metadata_params() -> list[tuple[str, str]]:
    return [("format", "metadata"), *(("metadataHeaders", name) for name in _SUMMARY_HEADERS)]


def _message_summary(message: dict[str, Any]) -> dict[str, Any]:
    headers = mail_headers(message.get("payload") or {})
    labels = message.get("labelIds") if isinstance(message.get("labelIds"), list) else []
    return {
        "id": clip(message.get("id"), 128),
        "thread_id": clip(message.get("threadId"), 128),
        "date": clip(headers.get("date"), 100),
        "from": clip(headers.get("from"), FIELD_MAX_CHARS),
        "to": clip(headers.get("to"), FIELD_MAX_CHARS),
        "subject": clip(headers.get("subject"), FIELD_MAX_CHARS),
        "snippet": clip(unescape_snippet(message.get("snippet")), FIELD_MAX_CHARS),
        "unread": "UNREAD" in labels,
    }


@_tool_errors
def search_mail(call: ToolCall) -> ToolResult:
    limit = int(call.arguments.get("max_results", 10))
    google = _Google(call.agent, GMAIL)
    listing = google.json(
        client.api_url("gmail", "users", "me", "messages"),
        {"q": call.arguments["query"], "maxResults": limit},
    )
    ids = [
        str(ref["id"])
        for ref in _items(listing.get("messages"))
        if re.match(_ID, str(ref.get("id", "")))
    ]
    messages = []
    for message_id in ids[:limit]:
        try:
            message = google.json(
                client.api_url("gmail", "users", "me", "messages", message_id), _metadata_params()
            )
        except GoogleFailed as exc:
            if exc.status == 404:
                continue  # deleted since the search: nothing to show
            raise
        messages.append(_message_summary(message))
    messages, dropped = fit_items(messages, max_bytes=RESULT_MAX_BYTES - 256)
    truncated = dropped or len(ids) > limit or bool(listing.get("nextPageToken"))
    return ToolResult(
        data={"messages": messages, "truncated": truncated},
        meta={
            "count": len(messages),
            "truncated": truncated,
            "estimate": _count(listing.get("resultSizeEstimate")),
            "google_calls": google.calls,
        },
    )


@_tool_errors
def get_message(call: ToolCall) -> ToolResult:
    google = _Google(call.agent, GMAIL)
    url = client.api_url("gmail", "users", "me", "messages", call.arguments["id"])
    try:
        message = google.json(url, {"format": "full"})
        body, attachments, source = mail_body(message.get("payload") or {})
    except TooLarge:
        # Too big to parse here: the headers and Google's snippet, no body.
        message = google.json(url, _metadata_params())
        body, attachments, source = "", [], "too_large"
    text, truncated = cut(body, TEXT_MAX_CHARS)
    headers = mail_headers(message.get("payload") or {})
    data = {
        **_message_summary(message),
        "cc": clip(headers.get("cc"), FIELD_MAX_CHARS),
        "body": "",
        "body_from": source,  # plain, html (markup stripped), none, too_large
        "body_truncated": truncated or source == "too_large",
        "attachments": attachments[:MAX_LISTED],
        "attachment_count": len(attachments),
    }
    data["body"], squeezed = fit_text(text, max_bytes=RESULT_MAX_BYTES - json_size(data))
    data["body_truncated"] = data["body_truncated"] or squeezed
    return ToolResult(
        data=data,
        meta={
            "body_chars": len(data["body"]),
            "body_from": source,
            "truncated": data["body_truncated"],
            "attachments": len(attachments),
            "google_calls": google.calls,
        },
    )


# --- drive.search and drive.get_file ------------------------------------------------------------


def _drive_query(words: str) -> str:
    """A Drive query that searches for ``words`` and nothing else: the agent's
    text is a quoted literal, never query syntax."""
    literal = words.replace("\\", "\\\\").replace("'", "\\'")
    return f"fullText contains '{literal}' and trashed = false"


_FILE_FIELDS = "id,name,mimeType,modifiedTime,size"


def _file(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": clip(item.get("id"), 128),
        "name": clip(item.get("name"), FIELD_MAX_CHARS),
        "mime_type": clip(item.get("mimeType"), 100),
        "modified_time": clip(item.get("modifiedTime"), 40),
        "size": _count(item.get("size")),
    }


@_tool_errors
def search_drive(call: ToolCall) -> ToolResult:
    limit = int(call.arguments.get("max_results", 10))
    google = _Google(call.agent, DRIVE)
    answer = google.json(
        client.api_url("drive", "files"),
        {
            "q": _drive_query(call.arguments["query"]),
            "pageSize": limit,
            "spaces": "drive",
            "fields": f"nextPageToken,files({_FILE_FIELDS})",
        },
    )
    found = _items(answer.get("files"))
    files, dropped = fit_items(
        [_file(item) for item in found[:limit]], max_bytes=RESULT_MAX_BYTES - 256
    )
    truncated = dropped or len(found) > limit or bool(answer.get("nextPageToken"))
    return ToolResult(
        data={"files": files, "truncated": truncated},
        meta={"count": len(files), "truncated": truncated, "google_calls": google.calls},
    )


@_tool_errors
def get_file(call: ToolCall) -> ToolResult:
    google = _Google(call.agent, DRIVE)
    file_id = call.arguments["id"]
    item = google.json(client.api_url("drive", "files", file_id), {"fields": _FILE_FIELDS})
    mime = str(item.get("mimeType", ""))
    # A UTF-8 character is at most 4 bytes: this many cover TEXT_MAX_CHARS.
    read_bytes = TEXT_MAX_CHARS * 4
    if mime == GOOGLE_DOC:
        raw, more = google.body(
            client.api_url("drive", "files", file_id, "export"),
            {"mimeType": "text/plain"},
            max_bytes=read_bytes,
        )
        extracted = "export"
    elif mime in TEXT_FILE_TYPES:
        raw, more = google.body(
            client.api_url("drive", "files", file_id), {"alt": "media"}, max_bytes=read_bytes
        )
        extracted = "download"
    else:
        raw, more, extracted = b"", False, "none"
    text = decode_text(raw)
    if more:
        text = text.rstrip("\ufffd")  # a character cut in half at the read limit
    text, truncated = cut(text, TEXT_MAX_CHARS)
    data = {
        **_file(item),
        "content": text if extracted != "none" else None,
        "content_truncated": more or truncated,
        "extracted": extracted,  # export (Google Doc as text), download (text file), none
    }
    if data["content"] is not None:
        data["content"], squeezed = fit_text(
            text, max_bytes=RESULT_MAX_BYTES - json_size({**data, "content": ""})
        )
        data["content_truncated"] = data["content_truncated"] or squeezed
    return ToolResult(
        data=data,
        meta={
            "content_chars": len(data["content"] or ""),
            "extracted": extracted,
            "truncated": data["content_truncated"],
            "google_calls": google.calls,
        },
    )


# --- Registration --------------------------------------------------------------------------------


def _reason(capability: Capability) -> Callable[[Agent], str | None]:
    def reason(agent: Agent) -> str | None:
        return services.unavailable_reason(agent=agent, capability=capability)

    return reason


TOOLS = (
    Tool(
        name="calendar.list_events",
        description=(
            "List the events of the owner's primary Google Calendar in a time range "
            f"(at most 31 days; up to {MAX_EVENTS} events, descriptions cut to "
            f"{DESCRIPTION_MAX_CHARS} characters). Read-only."
        ),
        parameters=LIST_EVENTS_PARAMETERS,
        perform=list_events,
        unavailable_reason=_reason(CALENDAR),
    ),
    Tool(
        name="gmail.search",
        description=(
            "Search the owner's Gmail with Gmail's search syntax; returns up to "
            f"{MAX_MESSAGES} messages with sender, recipients, subject, date, snippet and "
            "whether each is unread. Read-only: nothing can be sent, changed or deleted."
        ),
        parameters=GMAIL_SEARCH_PARAMETERS,
        perform=search_mail,
        unavailable_reason=_reason(GMAIL),
    ),
    Tool(
        name="gmail.get_message",
        description=(
            "Read one Gmail message by id: headers, its text (HTML reduced to text, cut "
            f"to {TEXT_MAX_CHARS} characters) and its attachments' names. Read-only."
        ),
        parameters=GMAIL_GET_PARAMETERS,
        perform=get_message,
        unavailable_reason=_reason(GMAIL),
    ),
    Tool(
        name="drive.search",
        description=(
            f"Search the owner's Google Drive for files containing words; up to {MAX_FILES} "
            "files with name, type, size and modification time. Read-only."
        ),
        parameters=DRIVE_SEARCH_PARAMETERS,
        perform=search_drive,
        unavailable_reason=_reason(DRIVE),
    ),
    Tool(
        name="drive.get_file",
        description=(
            "Read one Drive file by id: Google Docs and plain text files as text (cut to "
            f"{TEXT_MAX_CHARS} characters), any other file as metadata only. Read-only."
        ),
        parameters=DRIVE_GET_PARAMETERS,
        perform=get_file,
        unavailable_reason=_reason(DRIVE),
    ),
)


def register_tools() -> None:
    for tool in TOOLS:
        register(tool)
