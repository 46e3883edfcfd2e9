"""The conversation as the runtime sees it: the inbox hands out runs, replies are
stored once, and the control plane stops runs (deadline, lifecycle) with a reply
that says why."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import threading
import uuid

import psycopg
import pytest
from django.db import connection
from django.test import AsyncClient
from django.utils import timezone

from agents import inbox_wakeups
from agents.conversation_services import (
    expire_overdue_runs,
    hand_out_run,
    post_message,
    store_reply,
)
from agents.conversations import Message, MessageRole, Run, RunStatus, RunStep, StopReason
from agents.models import Agent, AgentStatus
from agents.services import stop_agent
from agents.tests.conftest import make_running
from agents.tokens import revoke_agent_tokens

pytestmark = pytest.mark.django_db


def poll(client, live, wait: float = 0):
    return client.get(f"/agent-api/v1/inbox?wait={wait}", headers=live.auth)


def reply(client, live, run_id, content="Done.", **extra):
    return client.post(
        f"/agent-api/v1/runs/{run_id}/reply",
        {"content": content, **extra},
        content_type="application/json",
        headers=live.auth,
    )


# --- Inbox ------------------------------------------------------------------------------------


def test_an_empty_inbox_answers_204(client, live):
    assert poll(client, live).status_code == 204


def test_the_inbox_hands_out_the_message_with_its_run_limits_prompt_and_tools(
    client, live, settings
):
    settings.AGENT_SYSTEM_PROMPT = "Operator prompt."
    Agent.objects.filter(pk=live.agent.pk).update(
        instructions="Answer in French.", time_zone="Europe/Paris", max_tool_calls_per_run=7
    )
    message = post_message(agent=live.agent, content="What time is it?")

    response = poll(client, live)

    assert response.status_code == 200
    body = response.json()
    run = Run.objects.get(message=message)
    assert run.status == RunStatus.ACTIVE
    assert run.deadline == run.started_at + dt.timedelta(seconds=live.agent.max_runtime_seconds)
    assert body["run"]["id"] == str(run.id)
    assert body["run"]["handed_out"] == 1
    assert body["run"]["limits"] == {
        "max_model_steps": live.agent.max_model_steps_per_run,
        "max_tool_calls": 7,
        "max_runtime_seconds": live.agent.max_runtime_seconds,
        "max_tokens_per_call": live.agent.max_tokens_per_request,
    }
    assert body["message"]["content"] == "What time is it?"
    assert body["message"]["role"] == "owner"
    assert body["system_prompt"] == "Operator prompt."
    assert body["owner"] == {"instructions": "Answer in French.", "time_zone": "Europe/Paris"}
    assert body["model"]["provider"] == "openai"
    assert [tool["name"] for tool in body["tools"]] == [
        "notes.list",
        "notes.save",
        "notes.search",
        "time.now",
    ]
    assert body["tools"][1]["parameters"]["additionalProperties"] is False


def test_tools_not_on_the_allow_list_are_not_offered(client, agent):
    live = make_running(agent, allowed_tools=["time.now", "gmail.send"])
    post_message(agent=live.agent, content="hi")
    assert [t["name"] for t in poll(client, live).json()["tools"]] == ["time.now"]
    response = client.get("/agent-api/v1/tools", headers=live.auth)
    assert [t["name"] for t in response.json()["tools"]] == ["time.now"]


def test_a_restarted_runtime_gets_the_same_run_with_counters_and_deadline_unchanged(client, live):
    post_message(agent=live.agent, content="first")
    post_message(agent=live.agent, content="second")
    first = poll(client, live).json()
    Run.objects.filter(pk=first["run"]["id"]).update(tool_calls=2, model_calls=3)

    again = poll(client, live).json()

    assert again["run"]["id"] == first["run"]["id"]
    assert again["run"]["handed_out"] == 2
    assert again["run"]["deadline"] == first["run"]["deadline"]
    assert again["run"]["used"] == {"model_calls": 3, "tool_calls": 2}
    assert again["message"]["content"] == "first"


def test_runs_are_handed_out_oldest_first_one_at_a_time(client, live):
    for text in ("one", "two"):
        post_message(agent=live.agent, content=text)
    first = poll(client, live).json()
    assert reply(client, live, first["run"]["id"]).status_code == 200
    second = poll(client, live).json()
    assert second["message"]["content"] == "two"
    assert [h["content"] for h in second["history"]] == ["one", "Done."]
    assert Run.objects.filter(status=RunStatus.ACTIVE).count() == 1


@pytest.mark.parametrize(
    "header", ["", "Bearer sca_unknown", "Basic abc", "Bearer not-a-token"], ids=repr
)
def test_the_inbox_refuses_a_missing_or_unknown_token(client, live, header):
    post_message(agent=live.agent, content="secret plans")
    response = client.get("/agent-api/v1/inbox?wait=0", headers={"Authorization": header})
    assert response.status_code == 401
    assert "secret plans" not in response.content.decode()
    assert Run.objects.get().status == RunStatus.QUEUED


def test_a_revoked_token_is_refused_at_once(client, live):
    revoke_agent_tokens(agent=live.agent)
    assert poll(client, live).status_code == 401


@pytest.mark.parametrize("status", [AgentStatus.STOPPED, AgentStatus.PAUSED, AgentStatus.KILLED])
def test_an_agent_that_is_not_running_is_handed_nothing(client, live, status):
    post_message(agent=live.agent, content="hello")
    Agent.objects.filter(pk=live.agent.pk).update(status=status)
    response = poll(client, live)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "agent_not_running"
    assert Run.objects.get().status == RunStatus.QUEUED


def test_an_unpaid_agent_is_handed_nothing(client, live):
    post_message(agent=live.agent, content="hello")
    Agent.objects.filter(pk=live.agent.pk).update(billing_active=False)
    assert poll(client, live).status_code == 409


@pytest.mark.parametrize("wait", ["-1", "26", "abc", "nan"])
def test_a_bad_wait_is_400(client, live, wait):
    response = client.get(f"/agent-api/v1/inbox?wait={wait}", headers=live.auth)
    assert response.status_code == 400


def test_the_inbox_works_with_redis_down(client, live, settings):
    with socket.socket() as probe:  # a port where no Redis answers
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{dead}/0",
        }
    }
    settings.REDIS_URL = f"redis://127.0.0.1:{dead}/0"
    post_message(agent=live.agent, content="no redis")
    assert poll(client, live).json()["message"]["content"] == "no redis"


def test_the_inbox_is_get_only(client, live):
    response = client.post("/agent-api/v1/inbox", headers=live.auth)
    assert response.status_code == 405


# --- Waking a waiting poll ----------------------------------------------------------------------


def post_from_another_thread(agent, content: str) -> None:
    try:
        post_message(agent=agent, content=content)
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_a_message_wakes_a_waiting_poll_in_this_process(agent, settings):
    # No fallback poll within the wait: only a wake-up can deliver the message in time.
    settings.AGENT_INBOX_FALLBACK_POLL_SECONDS = 60
    live = make_running(agent)

    async def scenario():
        client = AsyncClient()
        polling = asyncio.ensure_future(
            client.get("/agent-api/v1/inbox?wait=20", headers=live.auth)
        )
        await asyncio.sleep(0.5)
        assert not polling.done()
        await asyncio.to_thread(post_from_another_thread, live.agent, "wake up")
        return await asyncio.wait_for(polling, timeout=15)

    response = asyncio.run(scenario())
    assert response.status_code == 200
    assert response.json()["message"]["content"] == "wake up"


@pytest.mark.django_db(transaction=True)
def test_a_postgres_notify_from_another_process_wakes_the_waiter():
    if connection.vendor != "postgresql":
        pytest.fail("this test needs PostgreSQL (DATABASE_URL)")
    agent_id = str(uuid.uuid4())

    async def scenario() -> bool:
        waiter = inbox_wakeups.subscribe(agent_id)
        try:
            for _ in range(100):  # the listener thread connects on first use
                if inbox_wakeups.listener_connected():
                    break
                await asyncio.sleep(0.1)
            assert inbox_wakeups.listener_connected()
            # Another process's connection, not Django's: as the Celery worker would.
            params = inbox_wakeups._listen_params()
            with psycopg.connect(**params, autocommit=True) as other:
                other.execute("SELECT pg_notify(%s, %s)", [inbox_wakeups.CHANNEL, agent_id])
            return await waiter.wait(15)
        finally:
            inbox_wakeups.unsubscribe(waiter)

    assert asyncio.run(scenario()) is True


def test_without_a_listener_a_waiting_poll_looks_again_every_fallback_interval(settings):
    settings.AGENT_INBOX_FALLBACK_POLL_SECONDS = 5
    listener = inbox_wakeups._listener
    was = listener.connected
    try:
        listener.connected = False
        assert inbox_wakeups.wait_slice(25) == 5
        listener.connected = True
        assert inbox_wakeups.wait_slice(25) == 25
    finally:
        listener.connected = was


# --- Replies ----------------------------------------------------------------------------------


def test_a_reply_is_stored_once_and_a_retry_gets_the_same_answer(client, live):
    message = post_message(agent=live.agent, content="hi")
    run_id = poll(client, live).json()["run"]["id"]

    first = reply(client, live, run_id, "Hello!", model_steps=1, tool_calls=0)
    retry = reply(client, live, run_id, "Hello again?")

    assert first.status_code == retry.status_code == 200
    assert first.json() == retry.json()
    replies = Message.objects.filter(in_reply_to_id=run_id)
    assert [(m.role, m.content) for m in replies] == [(MessageRole.AGENT, "Hello!")]
    run = Run.objects.get(message=message)
    assert run.status == RunStatus.DONE
    assert run.stop_reason == StopReason.COMPLETED
    note = run.steps.get(kind="note")
    assert note.detail == {"reported_stop_reason": "completed", "model_steps": 1, "tool_calls": 0}
    assert poll(client, live).status_code == 204


def test_a_reply_to_another_agents_run_is_404(client, live, bob):
    from agents.services import create_agent

    other = make_running(create_agent(owner=bob, name="other", provider_key="sk-x"))
    Agent.objects.filter(pk=other.agent.pk).update(billing_active=True)
    post_message(agent=other.agent, content="bob's")
    run_id = poll(client, other).json()["run"]["id"]

    assert reply(client, live, run_id, "hijacked").status_code == 404
    assert reply(client, live, uuid.uuid4(), "nobody's").status_code == 404
    assert not Message.objects.filter(content="hijacked").exists()


def test_a_runtime_reports_the_limit_that_stopped_it(client, live):
    post_message(agent=live.agent, content="loop")
    run_id = poll(client, live).json()["run"]["id"]
    response = reply(client, live, run_id, "Stopped: max tool calls.", stop_reason="max_tool_calls")
    assert response.status_code == 200
    run = Run.objects.get(pk=run_id)
    assert (run.status, run.stop_reason) == (RunStatus.DONE, StopReason.MAX_TOOL_CALLS)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"content": ""},
        {"content": "x" * (Message.MAX_CONTENT_CHARS + 1)},
        {"content": "ok", "stop_reason": "agent_stopped"},
        {"content": "ok", "model_steps": -1},
        [],
    ],
)
def test_a_bad_reply_is_400_and_changes_nothing(client, live, body):
    post_message(agent=live.agent, content="hi")
    run_id = poll(client, live).json()["run"]["id"]
    url = f"/agent-api/v1/runs/{run_id}/reply"
    response = client.post(url, body, content_type="application/json", headers=live.auth)
    assert response.status_code == 400
    assert Run.objects.get(pk=run_id).status == RunStatus.ACTIVE


def test_nul_characters_in_a_reply_are_refused_not_a_server_error(client, live):
    post_message(agent=live.agent, content="hi")
    run_id = poll(client, live).json()["run"]["id"]
    assert reply(client, live, run_id, "a\x00b").status_code == 400
    assert Run.objects.get(pk=run_id).status == RunStatus.ACTIVE


# --- Runs the control plane stops -------------------------------------------------------------


def test_a_run_past_its_deadline_is_stopped_lazily_and_a_late_reply_refused(client, live):
    post_message(agent=live.agent, content="slow")
    run_id = poll(client, live).json()["run"]["id"]
    Run.objects.filter(pk=run_id).update(deadline=timezone.now() - dt.timedelta(seconds=1))

    late = reply(client, live, run_id, "finally")

    assert late.status_code == 409
    assert late.json()["error"]["stop_reason"] == "max_runtime"
    run = Run.objects.get(pk=run_id)
    assert (run.status, run.stop_reason) == (RunStatus.STOPPED, StopReason.MAX_RUNTIME)
    [notice] = Message.objects.filter(in_reply_to=run)
    assert notice.role == MessageRole.SYSTEM
    assert f"{live.agent.max_runtime_seconds} s" in notice.content
    assert "max runtime per run" in notice.content


def test_the_beat_task_stops_overdue_runs_once(live):
    post_message(agent=live.agent, content="stalled")
    run = hand_out_run(agent=live.agent)
    later = run.deadline + dt.timedelta(seconds=1)

    assert expire_overdue_runs(now=run.deadline - dt.timedelta(seconds=1)) == 0
    assert expire_overdue_runs(now=later) == 1
    assert expire_overdue_runs(now=later) == 0

    assert Message.objects.filter(in_reply_to=run, role=MessageRole.SYSTEM).count() == 1


def test_a_poll_past_the_deadline_stops_that_run_and_moves_to_the_next(client, live):
    post_message(agent=live.agent, content="stalled")
    post_message(agent=live.agent, content="next")
    stalled = poll(client, live).json()["run"]["id"]
    Run.objects.filter(pk=stalled).update(deadline=timezone.now() - dt.timedelta(seconds=1))

    body = poll(client, live).json()

    assert body["message"]["content"] == "next"
    assert Run.objects.get(pk=stalled).stop_reason == StopReason.MAX_RUNTIME


@pytest.mark.parametrize(
    ("to", "queued_left"),
    [
        (AgentStatus.STOPPED, 1),
        (AgentStatus.PAUSED, 1),
        (AgentStatus.FAILED, 1),
        (AgentStatus.KILLED, 0),
        (AgentStatus.DELETED, 0),
    ],
)
def test_leaving_running_cancels_the_active_run_with_a_reply_that_says_why(
    client, live, to, queued_left
):
    post_message(agent=live.agent, content="working")
    post_message(agent=live.agent, content="waiting")
    run_id = poll(client, live).json()["run"]["id"]

    live.agent.transition(to, source="test", reason="because")

    run = Run.objects.get(pk=run_id)
    assert (run.status, run.stop_reason) == (RunStatus.CANCELED, StopReason.AGENT_STOPPED)
    notice = Message.objects.get(in_reply_to=run)
    assert notice.role == MessageRole.SYSTEM
    assert "because" in notice.content
    assert Run.objects.filter(status=RunStatus.QUEUED).count() == queued_left
    assert reply(client, live, run_id, "too late").status_code == 409


def test_stop_agent_goes_through_the_same_place(live):
    post_message(agent=live.agent, content="working")
    run = hand_out_run(agent=live.agent)
    stop_agent(agent=live.agent, reason="stopped by its owner")
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELED
    assert "stopped by its owner" in run.stop_detail


def test_store_reply_raced_by_a_stop_keeps_only_the_first(live):
    post_message(agent=live.agent, content="race")
    run = hand_out_run(agent=live.agent)
    store_reply(agent=live.agent, run_id=run.pk, content="answer")
    live.agent.transition(AgentStatus.STOPPED, source="test")
    run.refresh_from_db()
    assert run.status == RunStatus.DONE
    assert list(Message.objects.filter(in_reply_to=run).values_list("role", flat=True)) == ["agent"]


@pytest.mark.django_db(transaction=True)
def test_two_polls_at_once_activate_one_run(agent):
    live = make_running(agent)
    for text in ("a", "b"):
        post_message(agent=live.agent, content=text)
    barrier = threading.Barrier(4)
    handed: list[str] = []

    def take() -> None:
        barrier.wait()
        run = hand_out_run(agent=live.agent)
        handed.append(str(run.pk))
        connection.close()

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(handed)) == 1
    assert Run.objects.filter(status=RunStatus.ACTIVE).count() == 1
    assert Run.objects.get(pk=handed[0]).handed_out == 4


def test_heartbeat_and_polls_record_liveness(client, live):
    assert live.refresh().last_activity_at is None
    poll(client, live)
    assert live.refresh().last_activity_at is not None


def test_run_steps_never_hold_content(client, live):
    post_message(agent=live.agent, content="save this secret: hunter2")
    run_id = poll(client, live).json()["run"]["id"]
    client.post(
        "/agent-api/v1/tools/notes.save",
        {"arguments": {"text": "hunter2"}},
        content_type="application/json",
        headers=live.auth,
    )
    reply(client, live, run_id, "Saved hunter2.")
    for step in RunStep.objects.filter(run_id=run_id):
        assert "hunter2" not in repr(step.detail)
