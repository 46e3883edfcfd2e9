"""The five Google tools against the stand-in APIs: what they return, the caps
they hold however big the mailbox or file, and when they are off."""

from __future__ import annotations

import json

import pytest

from agents.conversation_services import hand_out_run, post_message
from agents.conversations import Run, RunStep
from agents.tests.conftest import make_running
from agents.tools import ToolError, registered_tool
from integrations.google.content import json_size
from integrations.google.models import GoogleIntegration
from integrations.google.tests.google import drive_file, event, mail
from integrations.google.tools import (
    DESCRIPTION_MAX_CHARS,
    GOOGLE_DOC,
    MAX_EVENTS,
    MAX_MESSAGES,
    RESULT_MAX_BYTES,
    TEXT_MAX_CHARS,
)

pytestmark = pytest.mark.django_db

TOOLS = (
    "calendar.list_events",
    "gmail.search",
    "gmail.get_message",
    "drive.search",
    "drive.get_file",
)


def assert_read_only_and_bounded(google, result) -> None:
    """Every call reached Google as a GET; the result fits the cap; meta holds no text."""
    assert {r["method"] for r in google.log("api")} <= {"GET"}
    assert json_size(result.data) <= RESULT_MAX_BYTES
    for value in result.meta.values():
        assert value is None or isinstance(value, bool | int) or len(value) <= 20


# --- calendar.list_events ---------------------------------------------------------------------


def test_list_events_returns_the_range_in_order(connect, agent, google, perform):
    connect("calendar")
    google.serve(
        calendar=[
            event("late", "Dinner", "2026-11-28T19:00:00Z", "2026-11-28T21:00:00Z"),
            event(
                "early",
                "Stand-up",
                "2026-11-28T09:00:00Z",
                "2026-11-28T09:15:00Z",
                location="Room 4",
                description="<p>Agenda:<br>1. <b>Plans</b></p><script>steal()</script>",
                attendees=[{"email": "anna@example.org"}, {"email": "ben@example.org"}],
            ),
            event("tomorrow", "Later", "2026-11-29T09:00:00Z", "2026-11-29T10:00:00Z"),
        ]
    )

    result = perform(
        "calendar.list_events",
        agent,
        time_min="2026-11-28T00:00:00Z",
        time_max="2026-11-29T00:00:00Z",
    )

    first, second = result.data["events"]
    assert (first["summary"], second["summary"]) == ("Stand-up", "Dinner")
    assert first["start"] == "2026-11-28T09:00:00Z"
    assert first["location"] == "Room 4"
    assert first["description"] == "Agenda:\n1. Plans"  # markup and script gone
    assert first["attendees"] == ["anna@example.org", "ben@example.org"]
    assert result.data["truncated"] is False
    assert result.meta == {"count": 2, "truncated": False, "google_calls": 1}
    (call,) = google.log("api")
    assert call["path"] == "/calendar/v3/calendars/primary/events"
    assert ["singleEvents", ["true"]] in call["query"]
    assert_read_only_and_bounded(google, result)


def test_list_events_caps_a_crowded_calendar(connect, agent, google, perform):
    connect("calendar")
    long_text = "word " * 5_000
    google.serve(
        calendar=[
            event(
                f"e{i}",
                "x" * 1_000,
                f"2026-11-28T{i // 60:02d}:{i % 60:02d}:00Z",
                "2026-11-28T23:59:00Z",
                description=long_text,
            )
            for i in range(400)
        ]
    )

    result = perform(
        "calendar.list_events",
        agent,
        time_min="2026-11-28T00:00:00Z",
        time_max="2026-11-29T00:00:00Z",
        max_results=MAX_EVENTS,
    )

    events = result.data["events"]
    assert 0 < len(events) <= MAX_EVENTS
    assert result.data["truncated"] is True
    assert all(len(e["description"]) <= DESCRIPTION_MAX_CHARS for e in events)
    assert all(len(e["summary"]) <= 300 for e in events)
    assert_read_only_and_bounded(google, result)


def test_list_events_refuses_a_backwards_or_overlong_range(connect, agent, google, perform):
    connect("calendar")
    with pytest.raises(ToolError, match="after time_min"):
        perform(
            "calendar.list_events",
            agent,
            time_min="2026-11-28T00:00:00Z",
            time_max="2026-11-27T00:00:00Z",
        )
    with pytest.raises(ToolError, match="31 days"):
        perform(
            "calendar.list_events",
            agent,
            time_min="2026-01-01T00:00:00Z",
            time_max="2026-03-01T00:00:00Z",
        )
    assert google.log("api") == []


# --- gmail.search -----------------------------------------------------------------------------


def huge_mailbox(count: int) -> list[dict]:
    return [
        mail(
            f"m{i:05x}",
            subject=f"Invoice {i} " + "padding " * 60,
            text=f"Body {i}",
            unread=i % 2 == 0,
        )
        for i in range(count)
    ]


def test_gmail_search_passes_the_query_and_summarises(connect, agent, google, perform):
    connect("gmail")
    google.serve(
        gmail=[
            mail("a1", subject="Lunch?", text="Shall we eat at one &amp; talk?", unread=True),
            mail("a2", subject="Old news", text="read already", unread=False),
        ]
    )

    result = perform("gmail.search", agent, query="is:unread")

    (only,) = result.data["messages"]
    assert only["id"] == "a1"
    assert only["subject"] == "Lunch?"
    assert only["from"] == "Anna <anna@example.org>"
    assert only["unread"] is True
    assert only["snippet"] == "Shall we eat at one & talk?"
    listing, fetched = google.log("api")
    assert ["q", ["is:unread"]] in listing["query"]
    assert ["format", ["metadata"]] in fetched["query"]  # never the body, for a search
    assert result.meta["count"] == 1
    assert result.meta["estimate"] == 1
    assert_read_only_and_bounded(google, result)


def test_gmail_search_holds_its_caps_for_a_huge_mailbox(connect, agent, google, perform):
    connect("gmail")
    google.serve(gmail=huge_mailbox(5_000))

    result = perform("gmail.search", agent, query="Invoice", max_results=MAX_MESSAGES)

    assert len(result.data["messages"]) == MAX_MESSAGES
    assert result.data["truncated"] is True
    assert result.meta["estimate"] == 5_000
    assert len(google.log("api")) == 1 + MAX_MESSAGES
    assert_read_only_and_bounded(google, result)


def test_gmail_search_caps_even_when_google_ignores_max_results(connect, agent, google, perform):
    connect("gmail")
    google.serve(gmail=huge_mailbox(2_000), options={"ignore_max_results": True})

    result = perform("gmail.search", agent, query="Invoice", max_results=5)

    assert len(result.data["messages"]) == 5
    assert result.data["truncated"] is True
    assert len(google.log("api")) == 1 + 5  # not one fetch per message listed
    assert_read_only_and_bounded(google, result)


# --- gmail.get_message ------------------------------------------------------------------------


def test_get_message_reads_the_plain_text_and_lists_attachments(connect, agent, google, perform):
    connect("gmail")
    google.serve(
        gmail=[
            mail(
                "b1",
                subject="Report",
                text="Hello,\n\nthe report is attached.\n",
                html="<p>Hello, <b>HTML</b></p>",
                attachments=(("report.pdf", "application/pdf", 120_000),),
            )
        ]
    )

    result = perform("gmail.get_message", agent, id="b1")

    data = result.data
    assert data["body"] == "Hello,\n\nthe report is attached."
    assert data["body_from"] == "plain"
    assert data["attachments"] == [
        {"filename": "report.pdf", "mime_type": "application/pdf", "size": 120_000}
    ]
    assert data["subject"] == "Report"
    assert result.meta == {
        "body_chars": len(data["body"]),
        "body_from": "plain",
        "truncated": False,
        "attachments": 1,
        "google_calls": 1,
    }
    assert_read_only_and_bounded(google, result)


def test_get_message_strips_html_with_a_real_parser(connect, agent, google, perform):
    connect("gmail")
    markup = (
        "<html><head><title>t</title><style>p{color:red}</style></head><body>"
        "<p>Dear owner,</p><div>please <a href='https://evil.example/x'>click</a>"
        "&nbsp;here &amp; now</div><!-- hidden note --><script>alert(1)</script>"
        "<ul><li>one</li><li>two</li></ul></body></html>"
    )
    google.serve(gmail=[mail("h1", subject="HTML only", html=markup)])

    result = perform("gmail.get_message", agent, id="h1")

    body = result.data["body"]
    assert result.data["body_from"] == "html"
    assert body == "Dear owner,\n\nplease click here & now\n\none\ntwo"
    for leftover in ("<", ">", "color:red", "alert", "hidden note", "evil.example"):
        assert leftover not in body


def test_get_message_caps_a_huge_body(connect, agent, google, perform):
    connect("gmail")
    google.serve(gmail=[mail("big", subject="Log dump", text="é" * 2_000_000)])

    result = perform("gmail.get_message", agent, id="big")

    assert len(result.data["body"]) <= TEXT_MAX_CHARS
    assert result.data["body_truncated"] is True
    assert result.meta["truncated"] is True
    assert_read_only_and_bounded(google, result)


def test_a_message_too_big_to_read_gives_its_headers_and_snippet(connect, agent, google, perform):
    connect("gmail")
    google.serve(
        gmail=[mail("huge", subject="Backup", text="x" * 9_000_000, snippet="Nightly backup")]
    )

    result = perform("gmail.get_message", agent, id="huge")

    assert result.data["body"] == ""
    assert result.data["body_from"] == "too_large"
    assert result.data["body_truncated"] is True
    assert result.data["subject"] == "Backup"
    assert result.data["snippet"] == "Nightly backup"
    assert_read_only_and_bounded(google, result)


def test_an_unknown_message_is_a_clear_error(connect, agent, google, perform):
    connect("gmail")
    with pytest.raises(ToolError, match="Not found") as refused:
        perform("gmail.get_message", agent, id="nope")
    assert refused.value.permanent


# --- drive.search and drive.get_file ----------------------------------------------------------


def test_drive_search_keeps_the_words_a_literal(connect, agent, google, perform):
    connect("drive")
    google.serve(
        drive=[
            drive_file("d1", "O'Brien's notes", "text/plain", "minutes"),
            drive_file("d2", "Budget", GOOGLE_DOC, "numbers"),
            drive_file("d3", "secret", "text/plain", "x", trashed=True),
        ]
    )

    result = perform("drive.search", agent, query="O'Brien's")
    (found,) = result.data["files"]
    assert found == {
        "id": "d1",
        "name": "O'Brien's notes",
        "mime_type": "text/plain",
        "modified_time": "2026-11-26T10:00:00.000Z",
        "size": 7,
    }
    (call,) = google.log("api")
    assert ["q", ["fullText contains 'O\\'Brien\\'s' and trashed = false"]] in call["query"]

    # Query syntax from the agent stays inside the quoted literal.
    escaped = perform("drive.search", agent, query="x' or trashed = true or name contains '")
    assert escaped.data["files"] == []
    assert_read_only_and_bounded(google, escaped)


def test_get_file_exports_a_google_doc_as_text(connect, agent, google, perform):
    connect("drive")
    google.serve(drive=[drive_file("doc1", "Plan", GOOGLE_DOC, "Step one.\nStep two.")])

    result = perform("drive.get_file", agent, id="doc1")

    assert result.data["content"] == "Step one.\nStep two."  # Google's BOM dropped
    assert result.data["extracted"] == "export"
    assert result.data["name"] == "Plan"
    paths = [(r["path"], r["query"]) for r in google.log("api")]
    assert paths[1] == ("/drive/v3/files/doc1/export", [["mimeType", ["text/plain"]]])
    assert result.meta["content_chars"] == len("Step one.\nStep two.")
    assert_read_only_and_bounded(google, result)


def test_get_file_caps_a_huge_text_file(connect, agent, google, perform):
    connect("drive")
    google.serve(drive=[drive_file("big1", "huge.txt", "text/plain", "line of text\n" * 400_000)])

    result = perform("drive.get_file", agent, id="big1")

    assert len(result.data["content"]) == TEXT_MAX_CHARS
    assert result.data["content_truncated"] is True
    assert result.data["size"] == 5_200_000
    assert_read_only_and_bounded(google, result)


def test_get_file_gives_only_metadata_for_other_types(connect, agent, google, perform):
    connect("drive")
    google.serve(drive=[drive_file("pdf1", "scan.pdf", "application/pdf", "%PDF-1.7 ...")])

    result = perform("drive.get_file", agent, id="pdf1")

    assert result.data["content"] is None
    assert result.data["extracted"] == "none"
    assert len(google.log("api")) == 1  # the metadata, never the bytes


# --- When a tool is off -----------------------------------------------------------------------


def test_a_tool_whose_scope_was_not_granted_is_unavailable(connect, agent, google, perform):
    connect("calendar")
    connect("gmail", grant=[])  # the owner unticked Gmail
    google.serve()

    for name in ("gmail.search", "gmail.get_message", "drive.search", "drive.get_file"):
        assert registered_tool(name).unavailable_reason(agent) is not None
    assert "Gmail access was not granted" in registered_tool("gmail.search").unavailable_reason(
        agent
    )
    assert registered_tool("calendar.list_events").unavailable_reason(agent) is None
    with pytest.raises(ToolError, match="not granted"):
        perform("gmail.search", agent, query="is:unread")
    assert google.log() == []  # nothing reached Google


def test_tools_are_off_when_not_connected_switched_off_or_not_configured(
    connect, agent, google, settings
):
    calendar = registered_tool("calendar.list_events")
    assert "not connected" in calendar.unavailable_reason(agent)

    connect("calendar")
    assert calendar.unavailable_reason(agent) is None

    settings.GOOGLE_CAPABILITIES = ["gmail", "drive"]
    assert "switched off by the operator" in calendar.unavailable_reason(agent)

    settings.GOOGLE_CAPABILITIES = ["calendar"]
    settings.GOOGLE_CLIENT_ID = ""
    assert "not set up" in calendar.unavailable_reason(agent)


def test_one_agents_grant_serves_no_other_agent(connect, agent, google, perform, bob):
    from agents.services import create_agent

    connect("gmail")
    bobs = create_agent(owner=bob, name="bobs", provider_key="sk-bob")

    assert registered_tool("gmail.search").unavailable_reason(bobs) is not None
    with pytest.raises(ToolError):
        perform("gmail.search", bobs, query="x")
    assert GoogleIntegration.objects.filter(agent=bobs).count() == 0


def test_every_google_tool_is_registered(google):
    for name in TOOLS:
        assert registered_tool(name) is not None


def test_results_are_json(connect, agent, google, perform):
    connect("gmail")
    google.serve(gmail=[mail("j1", subject="Ünïcode ✓", text="naïve café")])
    result = perform("gmail.get_message", agent, id="j1")
    assert json.loads(json.dumps(result.data))["subject"] == "Ünïcode ✓"
    assert result.data["body"] == "naïve café"


# --- Refused at the tool endpoint, before anything reaches Google ---------------------------
# Each refusal goes through /agent-api/v1/tools/<name> with an agent token, as the
# runtime calls it, and the stand-in's log proves no request left for Google.


def endpoint_call(client, live, name: str, arguments) -> tuple[int, dict]:
    response = client.post(
        f"/agent-api/v1/tools/{name}",
        {"arguments": arguments},
        content_type="application/json",
        headers=live.auth,
    )
    return response.status_code, response.json()["error"]


def in_a_run(agent, *, tools=TOOLS):
    """``agent`` running with ``tools`` allowed, inside a run its control plane began."""
    live = make_running(agent, allowed_tools=list(tools), billing_active=True)
    post_message(agent=live.agent, content="go")
    run = hand_out_run(agent=live.agent)
    return live, run


def refusal_step(run) -> dict:
    (step,) = RunStep.objects.filter(run=run)
    assert step.kind == "refused"
    return step.detail


@pytest.mark.parametrize(
    ("name", "arguments", "where"),
    [
        ("gmail.search", {"query": "is:unread", "send_to": "mallory@example.com"}, "arguments"),
        ("gmail.search", {"query": "x", "max_results": 10_000}, "max_results"),
        ("gmail.get_message", {"id": "../../users/other/messages/1"}, "id"),
        ("calendar.list_events", {"time_min": "tomorrow"}, "time_min"),
        ("drive.get_file", {"id": "abc?alt=media"}, "id"),
    ],
)
def test_schema_invalid_arguments_are_refused_and_nothing_reaches_google(
    client, connect, agent, google, name, arguments, where
):
    for capability in ("calendar", "gmail", "drive"):
        connect(capability)
    google.serve(gmail=[mail("a1", subject="Hi", text="hello")])  # and an empty log
    live, run = in_a_run(agent)

    status, error = endpoint_call(client, live, name, arguments)

    assert (status, error["code"]) == (400, "invalid_arguments")
    assert error["message"].startswith(f"Tool '{name}' {where}: ")
    assert refusal_step(run)["code"] == "invalid_arguments"
    assert Run.objects.get(pk=run.pk).tool_calls == 0
    assert google.log() == []


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("gmail.search", 403, "tool_not_allowed"),  # registered, connected, not allowed
        ("gmail.send", 403, "tool_not_allowed"),  # no such tool, and not allowed
    ],
)
def test_a_tool_off_the_allow_list_is_refused_and_nothing_reaches_google(
    client, connect, agent, google, name, status, code
):
    connect("gmail")
    google.serve(gmail=[mail("a1", subject="Hi", text="hello")])
    live, run = in_a_run(agent, tools=["calendar.list_events"])

    got, error = endpoint_call(client, live, name, {"query": "is:unread"})

    assert (got, error["code"]) == (status, code)
    assert "is not on this agent's allow-list" in error["message"]
    assert refusal_step(run)["code"] == code
    assert google.log() == []


def test_a_send_tool_is_no_tool_even_on_the_allow_list(client, connect, agent, google):
    connect("gmail")
    google.serve(gmail=[mail("a1", subject="Hi", text="hello")])
    live, run = in_a_run(agent, tools=[*TOOLS, "gmail.send"])

    status, error = endpoint_call(client, live, "gmail.send", {"to": "attacker@example.com"})

    assert (status, error["code"]) == (404, "unknown_tool")
    assert refusal_step(run)["code"] == "unknown_tool"
    assert google.log() == []


def test_a_tool_whose_scope_was_not_granted_is_refused_at_the_endpoint(
    client, connect, agent, google
):
    connect("calendar")
    connect("gmail", grant=[])  # the owner unticked Gmail at Google
    google.serve(gmail=[mail("a1", subject="Hi", text="hello")])
    live, run = in_a_run(agent)

    status, error = endpoint_call(client, live, "gmail.search", {"query": "is:unread"})

    assert (status, error["code"]) == (409, "tool_unavailable")
    assert "Gmail access was not granted" in error["message"]
    assert refusal_step(run)["code"] == "tool_unavailable"
    offered = client.get("/agent-api/v1/tools", headers=live.auth).json()["tools"]
    assert [tool["name"] for tool in offered] == ["calendar.list_events"]
    assert google.log() == []


def test_another_agents_token_cannot_use_this_agents_google(client, connect, agent, google, bob):
    from agents.services import create_agent

    connect("gmail")
    google.serve(gmail=[mail("a1", subject="Alice's secret", text="hello")])
    bobs, _ = in_a_run(create_agent(owner=bob, name="bobs", provider_key="sk-bob-key-0123456789"))
    in_a_run(agent)  # Alice's agent is running too, inside a run of its own

    status, error = endpoint_call(client, bobs, "gmail.search", {"query": "is:unread"})

    assert (status, error["code"]) == (409, "tool_unavailable")
    assert "not connected" in error["message"]
    with_no_token = client.post(
        "/agent-api/v1/tools/gmail.search",
        {"arguments": {"query": "is:unread"}},
        content_type="application/json",
        headers={"Authorization": "Bearer sc_agent_not-a-real-token"},
    )
    assert with_no_token.status_code == 401
    assert google.log() == []
