"""The owner's conversation API: messages, standing instructions and schedules,
with alice and bob (another user's agent is a 404)."""

from __future__ import annotations

import pytest
from knox.models import AuthToken
from rest_framework.test import APIClient

from agents.conversation_services import MAX_QUEUED_RUNS, hand_out_run, store_reply
from agents.conversations import Message, Run, RunStatus, Schedule
from agents.models import Agent, AgentStatus
from agents.services import create_agent
from agents.tests.conftest import make_running

pytestmark = pytest.mark.django_db


def api(user) -> APIClient:
    client = APIClient()
    _, token = AuthToken.objects.create(user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


@pytest.fixture
def bobs_agent(bob):
    agent = create_agent(owner=bob, name="bobs", provider_key="sk-x")
    Agent.objects.filter(pk=agent.pk).update(billing_active=True)
    return make_running(agent)


def test_an_owner_message_is_queued_and_listed_with_its_run(alice, live):
    client = api(alice)
    response = client.post(f"/api/agents/{live.agent.id}/messages", {"content": "Hello"})
    assert response.status_code == 201
    body = response.json()
    assert body["role"] == "owner"
    assert body["run"]["status"] == "queued"
    assert Run.objects.get().message_id == body["id"]

    listed = client.get(f"/api/agents/{live.agent.id}/messages").json()
    assert [m["content"] for m in listed["messages"]] == ["Hello"]
    assert listed["has_more"] is False


def test_the_conversation_shows_replies_runs_and_their_steps(alice, live, client):
    api(alice).post(f"/api/agents/{live.agent.id}/messages", {"content": "Note this"})
    run = hand_out_run(agent=live.agent)
    client.post(
        "/agent-api/v1/tools/notes.save",
        {"arguments": {"text": "the thing"}},
        content_type="application/json",
        headers=live.auth,
    )
    Run.objects.filter(pk=run.pk).update(model_calls=2, tokens=321)
    store_reply(agent=live.agent, run_id=run.pk, content="Noted.")

    messages = api(alice).get(f"/api/agents/{live.agent.id}/messages").json()["messages"]

    inbound, answer = messages
    assert answer == {**answer, "role": "agent", "content": "Noted.", "in_reply_to": str(run.pk)}
    assert answer["run"] is None
    shown = inbound["run"]
    assert (shown["status"], shown["stop_reason"], shown["tool_calls"], shown["tokens"]) == (
        "done",
        "completed",
        1,
        321,
    )
    tool_step = next(step for step in shown["steps"] if step["kind"] == "tool_call")
    assert tool_step["name"] == "notes.save"
    assert set(tool_step["detail"]) >= {"arguments_sha256", "result_bytes", "latency_ms"}


def test_the_conversation_pages_backwards(alice, live):
    for number in range(5):
        Message.objects.create(agent=live.agent, role="owner", content=f"m{number}")
    client = api(alice)
    first = client.get(f"/api/agents/{live.agent.id}/messages?limit=2").json()
    assert [m["content"] for m in first["messages"]] == ["m3", "m4"]
    assert first["has_more"] is True
    older = client.get(
        f"/api/agents/{live.agent.id}/messages?limit=3&before={first['messages'][0]['id']}"
    ).json()
    assert [m["content"] for m in older["messages"]] == ["m0", "m1", "m2"]
    assert older["has_more"] is False


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "messages"),
        ("post", "messages"),
        ("get", "instructions"),
        ("put", "instructions"),
        ("get", "schedules"),
        ("post", "schedules"),
    ],
)
def test_another_users_agent_is_404_and_untouched(alice, bobs_agent, method, path):
    body = {
        "content": "hi",
        "instructions": "x",
        "time_zone": "UTC",
        "cron": "0 9 * * *",
        "prompt": "x",
    }
    response = getattr(api(alice), method)(f"/api/agents/{bobs_agent.agent.id}/{path}", body)
    assert response.status_code == 404
    assert not Message.objects.exists()
    assert not Schedule.objects.exists()
    assert Agent.objects.get(pk=bobs_agent.agent.pk).instructions == ""


def test_another_users_schedule_is_404_through_either_agent(alice, live, bobs_agent):
    theirs = api(bobs_agent.agent.owner).post(
        f"/api/agents/{bobs_agent.agent.id}/schedules", {"cron": "0 9 * * *", "prompt": "bob"}
    )
    schedule_id = theirs.json()["id"]
    client = api(alice)
    for agent_id in (live.agent.id, bobs_agent.agent.id):
        url = f"/api/agents/{agent_id}/schedules/{schedule_id}"
        assert client.get(url).status_code == 404
        assert client.patch(url, {"prompt": "alice"}).status_code == 404
        assert client.delete(url).status_code == 404
    assert Schedule.objects.get().prompt == "bob"


def test_no_credentials_is_401(live):
    assert APIClient().get(f"/api/agents/{live.agent.id}/messages").status_code == 401


@pytest.mark.parametrize(
    "content",
    ["", "x" * (Message.MAX_OWNER_CHARS + 1), "nul\x00here"],
    ids=["empty", "long", "nul"],
)
def test_a_bad_message_is_400(alice, live, content):
    response = api(alice).post(f"/api/agents/{live.agent.id}/messages", {"content": content})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    "status", [AgentStatus.KILLED, AgentStatus.FAILED, AgentStatus.PENDING_PAYMENT]
)
def test_an_agent_that_will_not_run_refuses_messages(alice, live, status):
    Agent.objects.filter(pk=live.agent.pk).update(status=status)
    response = api(alice).post(f"/api/agents/{live.agent.id}/messages", {"content": "hi"})
    assert response.status_code == 409
    assert not Message.objects.exists()


def test_a_stopped_agent_keeps_messages_for_later(alice, live):
    Agent.objects.filter(pk=live.agent.pk).update(status=AgentStatus.STOPPED)
    response = api(alice).post(f"/api/agents/{live.agent.id}/messages", {"content": "later"})
    assert response.status_code == 201
    assert Run.objects.get().status == RunStatus.QUEUED


def test_a_full_inbox_is_429(alice, live):
    client = api(alice)
    for number in range(MAX_QUEUED_RUNS):
        assert (
            client.post(
                f"/api/agents/{live.agent.id}/messages", {"content": f"{number}"}
            ).status_code
            == 201
        )
    response = client.post(f"/api/agents/{live.agent.id}/messages", {"content": "one more"})
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "inbox_full"


def test_instructions_and_time_zone_are_validated_and_handed_to_the_runtime(alice, live, client):
    owner = api(alice)
    url = f"/api/agents/{live.agent.id}/instructions"
    assert owner.get(url).json() == {"instructions": "", "time_zone": "UTC"}
    bad = owner.put(url, {"instructions": "x", "time_zone": "Mars/Olympus"})
    assert bad.status_code == 400
    too_long = owner.put(url, {"instructions": "x" * 8001, "time_zone": "UTC"})
    assert too_long.status_code == 400
    good = owner.put(url, {"instructions": "Be brief.", "time_zone": "Europe/Berlin"})
    assert good.json() == {"instructions": "Be brief.", "time_zone": "Europe/Berlin"}

    owner.post(f"/api/agents/{live.agent.id}/messages", {"content": "hi"})
    handed = client.get("/agent-api/v1/inbox?wait=0", headers=live.auth).json()
    assert handed["owner"] == {"instructions": "Be brief.", "time_zone": "Europe/Berlin"}


def test_schedules_crud(alice, live):
    client = api(alice)
    base = f"/api/agents/{live.agent.id}/schedules"
    created = client.post(base, {"cron": "30 7 * * 1-5", "prompt": "Brief me"})
    assert created.status_code == 201
    schedule = created.json()
    assert schedule["description"].lower().startswith("at 07:30")
    assert schedule["next_fire_at"] is not None

    assert [s["id"] for s in client.get(base).json()] == [schedule["id"]]
    changed = client.patch(f"{base}/{schedule['id']}", {"enabled": False}, format="json")
    assert changed.json()["enabled"] is False
    assert changed.json()["next_fire_at"] is None
    bad = client.patch(f"{base}/{schedule['id']}", {"cron": "* * * * *"}, format="json")
    assert bad.status_code == 400
    assert bad.json()["error"]["fields"]["cron"]
    assert client.delete(f"{base}/{schedule['id']}").status_code == 204
    assert not Schedule.objects.exists()


@pytest.mark.parametrize(
    ("seen_ago", "status", "alive"),
    [
        (5, AgentStatus.RUNNING, True),
        (200, AgentStatus.RUNNING, False),
        (None, AgentStatus.RUNNING, False),
        (5, AgentStatus.STOPPED, False),
    ],
)
def test_status_judges_the_runtime_alive_from_its_polls(alice, agent, seen_ago, status, alive):
    import datetime as dt

    from django.utils import timezone

    seen = timezone.now() - dt.timedelta(seconds=seen_ago) if seen_ago is not None else None
    Agent.objects.filter(pk=agent.pk).update(status=status, last_activity_at=seen)
    body = api(alice).get(f"/api/agents/{agent.id}/status").json()
    assert body["runtime_alive"] is alive


def test_a_poll_makes_a_silent_runtime_alive_again(alice, live, client):
    assert api(alice).get(f"/api/agents/{live.agent.id}/status").json()["runtime_alive"] is False
    client.get("/agent-api/v1/inbox?wait=0", headers=live.auth)
    assert api(alice).get(f"/api/agents/{live.agent.id}/status").json()["runtime_alive"] is True
