"""Driving the Google stand-in from tests: start it, fill it, and play the
owner's part of the consent screen.

The owner's browser is played by an httpx client that signs in to the
stand-in and submits its consent form, so Google's part of the flow is the
real thing (django-oauth-toolkit); our part runs in Django's test client.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2

ROOT = Path(__file__).resolve().parents[3]
CLIENT_ID = "saferclaw-test-client.apps.googleusercontent.example"
CLIENT_SECRET = "saferclaw-test-client-secret-0123456789"
REDIRECT_URI = "http://testserver/integrations/google/callback"

CALENDAR = "https://www.googleapis.com/auth/calendar.events.readonly"
GMAIL = "https://www.googleapis.com/auth/gmail.readonly"
DRIVE = "https://www.googleapis.com/auth/drive.readonly"


@dataclass
class StandIn:
    """The stand-in process and a client for its control endpoints."""

    process: subprocess.Popen
    base_url: str
    folder: tempfile.TemporaryDirectory
    control_client: httpx2.Client = field(init=False)

    def __post_init__(self) -> None:
        self.control_client = httpx2.Client(base_url=self.base_url, timeout=30)

    @classmethod
    def start(cls, *, redirect_uris: tuple[str, ...] = (REDIRECT_URI,)) -> StandIn:
        folder = tempfile.TemporaryDirectory(prefix="google-standin-")
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "integrations.google.tests.standin.settings",
            "STANDIN_DB": str(Path(folder.name) / "google.sqlite3"),
            "STANDIN_CLIENT_ID": CLIENT_ID,
            "STANDIN_CLIENT_SECRET": CLIENT_SECRET,
            "STANDIN_REDIRECT_URIS": " ".join(redirect_uris),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "integrations.google.tests.standin.server"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = process.stdout.readline() if process.stdout else ""
        if not line.startswith("READY "):
            process.kill()
            raise RuntimeError(f"the Google stand-in did not start: {line!r}")
        return cls(process=process, base_url=f"http://127.0.0.1:{line.split()[1]}", folder=folder)

    def stop(self) -> None:
        self.control_client.close()
        self.process.terminate()
        self.process.wait(timeout=10)
        if self.process.stdout:
            self.process.stdout.close()
        self.folder.cleanup()

    # --- What the control plane is configured with -----------------------------------------

    def settings(self) -> dict[str, Any]:
        return {
            "GOOGLE_CLIENT_ID": CLIENT_ID,
            "GOOGLE_CLIENT_SECRET": CLIENT_SECRET,
            "GOOGLE_AUTH_URL": f"{self.base_url}/o/oauth2/v2/auth",
            "GOOGLE_TOKEN_URL": f"{self.base_url}/token",
            "GOOGLE_REVOKE_URL": f"{self.base_url}/revoke",
            "GOOGLE_CALENDAR_API_URL": f"{self.base_url}/calendar/v3",
            "GOOGLE_GMAIL_API_URL": f"{self.base_url}/gmail/v1",
            "GOOGLE_DRIVE_API_URL": f"{self.base_url}/drive/v3",
            "GOOGLE_CAPABILITIES": ["calendar", "gmail", "drive"],
            "GOOGLE_REDIRECT_URI": "",
        }

    # --- Control --------------------------------------------------------------------------------

    def control(self, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.control_client.post(f"/_control/{action}", json=body or {})
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        """A fresh Google account: no grant, no data, default token lifetime, empty log."""
        self.control("reset")

    def serve(self, **data: Any) -> None:
        """Serve ``calendar``, ``gmail`` and ``drive`` items (and ``options``); clears the log."""
        self.control("serve", data)

    def log(self, kind: str | None = None) -> list[dict[str, Any]]:
        requests = self.control_client.get("/_control/log").json()["requests"]
        return [r for r in requests if kind is None or r["kind"] == kind]

    # --- The owner at Google's consent screen -----------------------------------------------

    def consent(
        self,
        authorization_url: str,
        *,
        grant: list[str] | None = None,
        allow: bool = True,
        account: str = "owner@gmail.example",
    ) -> str:
        """Sign in at the stand-in and answer its consent form; returns where Google
        sends the browser back (our callback URL with code and state).

        ``grant`` is what the owner leaves ticked (Google's granular consent);
        ``account`` the Google account signed in."""
        with httpx2.Client(timeout=30) as browser:
            login = browser.post(f"{self.base_url}/_control/login", json={"account": account})
            login.raise_for_status()
            page = browser.get(authorization_url)
            assert page.status_code == 200, page.text[:500]
            fields = hidden_fields(page.text)
            assert fields, f"no consent form: {page.text[:500]}"
            if grant is not None:
                fields["granted_scopes"] = " ".join(grant)
            if allow:
                fields["allow"] = "Authorize"
            answer = browser.post(authorization_url, data=fields)
            assert answer.status_code == 302, answer.text[:500]
            return answer.headers["location"]

    def refresh_at_google(self, refresh_token: str) -> httpx2.Response:
        """What Google answers to this refresh token now (as any client would ask)."""
        return self.control_client.post(
            "/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            },
        )

    def api_get(self, path: str, access_token: str, **params: Any) -> httpx2.Response:
        return self.control_client.get(
            path, params=params, headers={"Authorization": f"Bearer {access_token}"}
        )


class _HiddenFields(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "input" and values.get("type") == "hidden" and values.get("name"):
            self.fields[values["name"]] = values.get("value") or ""


def hidden_fields(page: str) -> dict[str, str]:
    parser = _HiddenFields()
    parser.feed(page)
    return parser.fields


def callback_path(location: str) -> str:
    """The path and query of our callback URL, for Django's test client."""
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == REDIRECT_URI, location
    return f"{parts.path}?{parts.query}"


def connect_as_owner(owner: Any, google: StandIn, agent: Any, capability: str, **consent: Any):
    """The owner connects ``capability`` of ``agent``: our connect button (``owner`` is a
    signed-in Django test client), Google's consent screen, our callback. Returns the
    callback's response."""
    from django.urls import reverse

    started = owner.post(
        reverse("integrations:google-connect", args=[agent.pk]), {"capability": capability}
    )
    assert started.status_code == 303, started
    back = google.consent(started["Location"], **consent)
    return owner.get(callback_path(back))


def query_of(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


# --- Data in Google's shapes ----------------------------------------------------------------


def event(event_id: str, summary: str, start: str, end: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "calendar#event",
        "id": event_id,
        "status": "confirmed",
        "summary": summary,
        "start": {"dateTime": start},
        "end": {"dateTime": end},
        "organizer": {"email": "owner@gmail.example", "self": True},
        **extra,
    }


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def mail(
    message_id: str,
    *,
    subject: str,
    sender: str = "Anna <anna@example.org>",
    to: str = "owner@gmail.example",
    text: str | None = None,
    html: str | None = None,
    unread: bool = True,
    attachments: tuple[tuple[str, str, int], ...] = (),
    snippet: str | None = None,
) -> dict[str, Any]:
    """A Gmail message resource as ``format=full`` returns it."""
    parts = []
    if text is not None:
        parts.append(
            {
                "partId": "0",
                "mimeType": "text/plain",
                "filename": "",
                "headers": [{"name": "Content-Type", "value": 'text/plain; charset="UTF-8"'}],
                "body": {"size": len(text.encode()), "data": _b64(text.encode())},
            }
        )
    if html is not None:
        parts.append(
            {
                "partId": "1",
                "mimeType": "text/html",
                "filename": "",
                "headers": [{"name": "Content-Type", "value": 'text/html; charset="UTF-8"'}],
                "body": {"size": len(html.encode()), "data": _b64(html.encode())},
            }
        )
    body_tree = {
        "mimeType": "multipart/alternative",
        "filename": "",
        "body": {"size": 0},
        "parts": parts,
    }
    for index, (filename, mime, size) in enumerate(attachments):
        body_tree = {
            "mimeType": "multipart/mixed",
            "filename": "",
            "body": {"size": 0},
            "parts": [
                body_tree,
                {
                    "partId": f"a{index}",
                    "mimeType": mime,
                    "filename": filename,
                    "body": {"size": size, "attachmentId": f"att-{message_id}-{index}"},
                },
            ],
        }
    headers = [
        {"name": "From", "value": sender},
        {"name": "To", "value": to},
        {"name": "Subject", "value": subject},
        {"name": "Date", "value": "Fri, 27 Nov 2026 08:00:00 +0000"},
    ]
    return {
        "id": message_id,
        "threadId": f"t{message_id}",
        "labelIds": ["INBOX", *(["UNREAD"] if unread else [])],
        "snippet": snippet if snippet is not None else (text or subject)[:100],
        "sizeEstimate": len((text or "") + (html or "")),
        "internalDate": "1795852800000",
        "payload": {**body_tree, "headers": headers},
    }


def drive_file(
    file_id: str, name: str, mime: str, content: str = "", **extra: Any
) -> dict[str, Any]:
    item = {
        "kind": "drive#file",
        "id": file_id,
        "name": name,
        "mimeType": mime,
        "modifiedTime": "2026-11-26T10:00:00.000Z",
        "content": content,
        **extra,
    }
    if not mime.startswith("application/vnd.google-apps."):
        item["size"] = str(len(content.encode()))
    return item
