"""What a Google tool's ``perform`` adds over calling the Google stand-in directly.

    ./dev bench tool_gateway_latency [CALLS]

Starts the Google stand-in of the tests (django-oauth-toolkit and the
Calendar/Gmail/Drive endpoints, on loopback), connects an agent to all three
capabilities through the real OAuth flow, then for each tool times, p50 over
CALLS rounds (default 200), two things side by side in the same run:

- direct: the same HTTP requests the tool makes (same paths, same parameters,
  the same bearer token) on one kept-open httpx2 client;
- perform: the tool's ``perform`` as the tool endpoint calls it (the agent's
  grant read from PostgreSQL and opened, token freshness checked, the calls,
  parsing, text extraction and caps).

perform - direct is the tool layer's own added latency; the tool endpoint's
share (token, limits, run step) comes on top of it. The database is a fresh
``tool_gateway_bench`` on BENCH_POSTGRES_URL (default
postgres://postgres@127.0.0.1:5432), dropped afterwards.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.deploy_latency import machine, percentile  # noqa: E402
from integrations.google.tests.google import (  # noqa: E402
    StandIn,
    callback_path,
    drive_file,
    event,
    mail,
)

POSTGRES = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
DATABASE = "tool_gateway_bench"
GOOGLE_DOC = "application/vnd.google-apps.document"


def _database(action: str) -> None:
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        if action == "create":
            connection.execute(f"CREATE DATABASE {DATABASE}")


def _setup_django(standin: StandIn) -> None:
    google = standin.settings()
    os.environ.update(
        DJANGO_SETTINGS_MODULE="safer_claw.settings_test",
        DATABASE_URL=f"{POSTGRES}/{DATABASE}",
        LOG_LEVEL="WARNING",
        GOOGLE_CAPABILITIES=",".join(google.pop("GOOGLE_CAPABILITIES")),
        **{name: str(value) for name, value in google.items()},
    )
    os.environ.pop("REDIS_URL", None)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def _connected_agent(standin: StandIn) -> Any:
    from django.test import Client
    from django.urls import reverse

    from agents.services import create_agent
    from safer_claw.accounts.models import User

    owner = User.objects.create_user("bench@example.com", "x")
    agent = create_agent(owner=owner, name="bench", provider_key="sk-bench")
    browser = Client()
    browser.force_login(owner)
    for capability in ("calendar", "gmail", "drive"):
        started = browser.post(
            reverse("integrations:google-connect", args=[agent.pk]), {"capability": capability}
        )
        browser.get(callback_path(standin.consent(started["Location"])))
    return agent


def _serve(standin: StandIn) -> None:
    standin.serve(
        calendar=[
            event(
                f"e{i}",
                f"Meeting {i}",
                f"2026-11-28T{8 + i:02d}:00:00Z",
                f"2026-11-28T{8 + i:02d}:30:00Z",
                description="<p>Agenda</p><ul><li>one</li><li>two</li></ul>",
            )
            for i in range(10)
        ],
        gmail=[
            mail(f"m{i:04x}", subject=f"Invoice {i}", text="Dear owner,\n" + "text " * 400)
            for i in range(50)
        ],
        drive=[
            drive_file(f"file{i:03d}xxxxxxxxxx", f"Notes {i}", "text/plain", "notes " * 100)
            for i in range(20)
        ]
        + [drive_file("doc0000000000000", "Plan", GOOGLE_DOC, "Step one.\n" * 500)],
    )


def _cases(standin: StandIn, token: str) -> list[tuple[str, dict[str, Any], list[tuple[str, Any]]]]:
    """(tool, arguments, the requests the tool makes: path and parameters)."""
    metadata = [("format", "metadata")] + [
        ("metadataHeaders", h) for h in ("From", "To", "Subject", "Date")
    ]
    ids = [f"m{i:04x}" for i in range(10)]
    return [
        (
            "calendar.list_events",
            {"time_min": "2026-11-28T00:00:00+00:00", "time_max": "2026-11-29T00:00:00+00:00"},
            [
                (
                    "/calendar/v3/calendars/primary/events",
                    {
                        "timeMin": "2026-11-28T00:00:00+00:00",
                        "timeMax": "2026-11-29T00:00:00+00:00",
                        "maxResults": 20,
                        "singleEvents": "true",
                        "orderBy": "startTime",
                    },
                )
            ],
        ),
        (
            "gmail.search",
            {"query": "Invoice", "max_results": 10},
            [("/gmail/v1/users/me/messages", {"q": "Invoice", "maxResults": 10})]
            + [(f"/gmail/v1/users/me/messages/{i}", metadata) for i in ids],
        ),
        (
            "gmail.get_message",
            {"id": "m0000"},
            [("/gmail/v1/users/me/messages/m0000", {"format": "full"})],
        ),
        (
            "drive.search",
            {"query": "notes", "max_results": 10},
            [
                (
                    "/drive/v3/files",
                    {
                        "q": "fullText contains 'notes' and trashed = false",
                        "pageSize": 10,
                        "spaces": "drive",
                        "fields": "nextPageToken,files(id,name,mimeType,modifiedTime,size)",
                    },
                )
            ],
        ),
        (
            "drive.get_file",
            {"id": "doc0000000000000"},
            [
                (
                    "/drive/v3/files/doc0000000000000",
                    {"fields": "id,name,mimeType,modifiedTime,size"},
                ),
                ("/drive/v3/files/doc0000000000000/export", {"mimeType": "text/plain"}),
            ],
        ),
    ]


def _measure(
    direct: Callable[[], None], perform: Callable[[], None], rounds: int
) -> tuple[list[float], list[float]]:
    for _ in range(10):  # warm up both
        direct()
        perform()
    direct_times, perform_times = [], []
    for _ in range(rounds):  # interleaved, so drift on a shared machine hits both
        started = time.perf_counter()
        direct()
        direct_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        perform()
        perform_times.append(time.perf_counter() - started)
    return direct_times, perform_times


def _row(*cells: object) -> str:
    first, *rest = cells
    return f"{first!s:22}" + "".join(f"{cell!s:>16}" for cell in rest)


def main(rounds: int = 200) -> None:
    standin = StandIn.start()
    _database("create")
    try:
        _setup_django(standin)
        run(standin, rounds)
    finally:
        from django.db import connections

        connections.close_all()
        _database("drop")
        standin.stop()


def run(standin: StandIn, rounds: int) -> None:
    import httpx2

    from agents.tools import ToolCall, registered_tool
    from integrations.google.models import GoogleIntegration

    agent = _connected_agent(standin)
    _serve(standin)
    token = GoogleIntegration.objects.get(agent=agent).token["access_token"]
    direct_client = httpx2.Client(
        base_url=standin.base_url, headers={"Authorization": f"Bearer {token}"}
    )

    print(f"machine: {machine()}")
    print(
        "Google stand-in: django-oauth-toolkit + Calendar/Gmail/Drive JSON on loopback "
        "(wsgiref, HTTP/1.0); control plane database: PostgreSQL"
    )
    print(f"rounds: {rounds} per tool, interleaved\n")
    columns = ("tool", "calls", "direct p50 ms", "perform p50 ms", "added ms", "ratio")
    print(_row(*columns))
    for name, arguments, requests in _cases(standin, token):
        tool = registered_tool(name)
        call = ToolCall(agent=agent, arguments=arguments)

        def direct(requests: list[tuple[str, Any]] = requests) -> None:
            for path, params in requests:
                response = direct_client.get(path, params=params)
                response.raise_for_status()
                response.content  # noqa: B018 - read the whole body, as the tool does

        def perform(tool: Any = tool, call: ToolCall = call) -> None:
            tool.perform(call)

        direct_times, perform_times = _measure(direct, perform, rounds)
        d50 = percentile(direct_times, 0.5) * 1000
        p50 = percentile(perform_times, 0.5) * 1000
        print(
            _row(
                name,
                len(requests),
                f"{d50:.2f}",
                f"{p50:.2f}",
                f"{p50 - d50:.2f}",
                f"{p50 / d50:.2f}",
            )
        )
    direct_client.close()
    print(
        "\ndirect: the tool's own HTTP requests on one httpx2 client; perform: the tool "
        "as the tool endpoint calls it. added = perform - direct (p50 each)."
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
