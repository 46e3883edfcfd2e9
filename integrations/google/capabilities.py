"""What an agent can be given of a Google account: one capability per API, each
with the narrowest read-only scope that serves its tools.

The operator offers a subset (``GOOGLE_CAPABILITIES``); the owner connects
each one separately, and Google may grant less than was asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings


@dataclass(frozen=True)
class Capability:
    key: str
    label: str
    scope: str
    # Google's classification of the scope: "sensitive" or "restricted"
    # (restricted scopes need Google's security assessment before public launch).
    classification: str
    # What the scope lets the agent read, in the owner's words.
    reads: str
    tools: tuple[str, ...]


CALENDAR = Capability(
    key="calendar",
    label="Google Calendar",
    scope="https://www.googleapis.com/auth/calendar.events.readonly",
    classification="sensitive",
    reads=(
        "Read the events of your calendars: titles, times, places, descriptions and "
        "guests. It cannot create, change or delete events."
    ),
    tools=("calendar.list_events",),
)
GMAIL = Capability(
    key="gmail",
    label="Gmail",
    scope="https://www.googleapis.com/auth/gmail.readonly",
    classification="restricted",
    reads=(
        "Search and read all your email: senders, recipients, subjects, bodies and the "
        "names of attachments. It cannot send, delete, label or change mail."
    ),
    tools=("gmail.search", "gmail.get_message"),
)
DRIVE = Capability(
    key="drive",
    label="Google Drive",
    scope="https://www.googleapis.com/auth/drive.readonly",
    classification="restricted",
    reads=(
        "Search all your Drive files and read them (Google Docs and plain text files "
        "as text; other files by name and type only). It cannot create, change, share "
        "or delete files."
    ),
    tools=("drive.search", "drive.get_file"),
)

CAPABILITIES: dict[str, Capability] = {c.key: c for c in (CALENDAR, GMAIL, DRIVE)}
BY_SCOPE: dict[str, Capability] = {c.scope: c for c in CAPABILITIES.values()}


def google_configured() -> bool:
    """Whether this Safer-Claw has a Google OAuth client at all."""
    return bool(settings.GOOGLE_CLIENT_ID)


def offered(capability: Capability) -> bool:
    """Whether the operator offers this capability (it may be switched off)."""
    return capability.key in settings.GOOGLE_CAPABILITIES
