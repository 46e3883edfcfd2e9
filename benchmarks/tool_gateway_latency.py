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
  parsing, text extraction and caps);
- endpoint: the whole tool gateway, ``POST /agent-api/v1/tools/<name>`` with the
  agent's token inside an active run, through Django's handler in process (token,
  agent and run checks, schema, the call reserved on the run and the day, perform,
  the run's step); no HTTP server or socket on our side.

perform - direct is the tool layer's own added latency; endpoint - direct is
what the tool gateway adds over calling Google directly. The database is a fresh
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


def _measure(ways: list[Callable[[], None]], rounds: int) -> list[list[float]]:
    for _ in range(10):  # warm up each
        for way in ways:
            way()
    times: list[list[float]] = [[] for _ in ways]
    for _ in range(rounds):  # interleaved, so drift on a shared machine hits each
        for way, taken in zip(ways, times, strict=True):
            started = time.perf_counter()
            way()
            taken.append(time.perf_counter() - started)
    return times


def _in_a_run(agent: Any) -> str:
    """The agent running and paid, allowed the five tools with room for every call,
    inside an active run; returns its token."""
    from agents.conversation_services import hand_out_run, post_message
    from agents.models import Agent, AgentStatus
    from agents.tokens import issue_agent_token
    from integrations.google.tools import TOOLS

    Agent.objects.filter(pk=agent.pk).update(
        status=AgentStatus.RUNNING,
        billing_active=True,
        allowed_tools=[tool.name for tool in TOOLS],
        max_tool_calls_per_run=1_000_000,
        max_tool_calls_per_day=1_000_000,
        max_runtime_seconds=24 * 3600,
    )
    agent.refresh_from_db()
    post_message(agent=agent, content="benchmark")
    hand_out_run(agent=agent)
    return issue_agent_token(agent=agent)


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
    from django.test import Client

    from agents.tools import ToolCall, registered_tool
    from integrations.google.models import GoogleIntegration

    agent = _connected_agent(standin)
    _serve(standin)
    runtime = Client(headers={"Authorization": f"Bearer {_in_a_run(agent)}"})
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
    columns = ("tool", "calls", "direct p50 ms", "perform p50", "endpoint p50", "added ms")
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

        def endpoint(name: str = name, arguments: dict[str, Any] = arguments) -> None:
            response = runtime.post(
                f"/agent-api/v1/tools/{name}",
                {"arguments": arguments},
                content_type="application/json",
            )
            if response.status_code != 200:  # a refusal would time the wrong thing
                raise RuntimeError(f"{name}: {response.status_code} {response.content[:200]!r}")

        d50, p50, e50 = (
            percentile(times, 0.5) * 1000 for times in _measure([direct, perform, endpoint], rounds)
        )
        print(
            _row(name, len(requests), f"{d50:.2f}", f"{p50:.2f}", f"{e50:.2f}", f"{e50 - d50:.2f}")
        )
    direct_client.close()
    print(
        "\ndirect: the tool's own HTTP requests on one httpx2 client; perform: the tool "
        "as the tool endpoint calls it; endpoint: POST /agent-api/v1/tools/<name> in an "
        "active run, through Django's handler in process. added = endpoint - direct "
        "(p50 each): what the tool gateway adds over calling Google directly."
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
