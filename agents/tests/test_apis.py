"""The agents API: ownership, wrong states, lifecycle actions, status, logs, usage."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings as django_settings
from django.test import AsyncClient, Client
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from agents.apis import LogRedactor, redact
from agents.models import Agent, AgentEvent, AgentStatus
from agents.services import create_agent, deploy_agent, stop_agent
from agents.tests.factories import paid
from droplets.containers import ContainerSpec, container_state, run_container
from droplets.docker_client import DropletError
from droplets.models import Droplet
from droplets.tests.factories import DropletFactory
from gateway.models import UsageRecord, UsageStatus

S = AgentStatus

# Every agent endpoint, as (method, path template).
AGENT_ENDPOINTS = [
    ("get", "/api/agents/{id}/"),
    ("delete", "/api/agents/{id}/"),
    ("get", "/api/agents/{id}/status"),
    ("post", "/api/agents/{id}/start"),
    ("post", "/api/agents/{id}/stop"),
    ("get", "/api/agents/{id}/logs"),
    ("get", "/api/agents/{id}/usage"),
    ("post", "/api/agents/{id}/kill-secret"),
]


def api_client(user=None) -> APIClient:
    """A script's client: authenticated by API token, as DESIGN.md's scripts are."""
    client = APIClient()
    if user is not None:
        _, token = AuthToken.objects.create(user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def call(client, method: str, template: str, agent_id) -> object:
    return getattr(client, method)(template.format(id=agent_id))


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def agent_token(engines, agent: Agent) -> str:
    env = engines["d1"].api.inspect_container(agent.container_id)["Config"]["Env"]
    return dict(item.split("=", 1) for item in env)["AGENT_TOKEN"]


def place(agent: Agent, droplet: Droplet, container_id: str) -> Agent:
    """Put the agent in `running` on ``droplet`` with ``container_id``, as a deploy would."""
    paid(agent)
    agent.transition(S.PROVISIONING, source="test")
    agent.transition(S.RUNNING, source="test", droplet=droplet, container_id=container_id)
    return agent


def run_script(agent: Agent, droplet: Droplet, image: str, script: str) -> Agent:
    """Run ``script`` in a hardened busybox container that stands for the agent's."""
    spec = ContainerSpec(
        name=f"saferclaw-agent-{agent.id}",
        image=image,
        environment={},
        labels={"saferclaw.agent": str(agent.id), "saferclaw.owner": str(agent.owner_id)},
        cpus=0.5,
        memory_bytes=64 * 1024**2,
        pids_limit=32,
        command=["sh", "-c", script],
    )
    return place(agent, droplet, run_container(droplet, spec))


@pytest.fixture
def running(alice, local_droplet):
    """Alice's agent, deployed on the local droplet (a real container)."""
    return deploy_agent(
        agent=paid(create_agent(owner=alice, name="runner", provider_key="sk-test-provider-key-1"))
    )


# --- Ownership ----------------------------------------------------------------------------


@pytest.mark.docker
def test_another_users_agent_answers_404_on_every_endpoint(bob, running, engines):
    bob_client = api_client(bob)
    statuses = {
        f"{method} {template}": call(bob_client, method, template, running.id).status_code
        for method, template in AGENT_ENDPOINTS
    }
    assert statuses == {f"{m} {t}": 404 for m, t in AGENT_ENDPOINTS}
    response = bob_client.get(f"/api/agents/{running.id}/status")
    assert error_of(response)["code"] == "not_found"
    # Nothing happened to Alice's agent.
    running.refresh_from_db()
    assert running.status == S.RUNNING
    assert container_state(running.droplet, running.container_id).running
    assert bob_client.get("/api/agents/").json() == []


@pytest.mark.docker
def test_anonymous_requests_answer_401_on_every_endpoint(running):
    anonymous = APIClient()
    statuses = {
        f"{method} {template}": call(anonymous, method, template, running.id).status_code
        for method, template in [
            *AGENT_ENDPOINTS,
            ("get", "/api/agents/"),
            ("post", "/api/agents/"),
        ]
    }
    assert set(statuses.values()) == {401}, statuses
    response = anonymous.post(f"/api/agents/{running.id}/stop")
    assert error_of(response)["code"] == "not_authenticated"
    assert response.headers["WWW-Authenticate"] == "Token"
    running.refresh_from_db()
    assert running.status == S.RUNNING


@pytest.mark.django_db
def test_an_unknown_agent_id_answers_404_like_another_users(alice):
    response = api_client(alice).get(f"/api/agents/{uuid.uuid4()}/status")
    assert response.status_code == 404
    assert error_of(response) == {"code": "not_found", "message": "Not found."}


@pytest.mark.django_db
def test_the_list_shows_only_the_users_own_live_agents(alice, bob, agent):
    create_agent(owner=bob, name="bobs")
    gone = create_agent(owner=alice, name="gone")
    gone.transition(S.DELETED, source="test")
    names = [item["name"] for item in api_client(alice).get("/api/agents/").json()]
    assert names == ["helper"]


@pytest.mark.django_db
def test_a_session_needs_its_csrf_token_for_actions(alice, agent):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    assert browser.get(f"/api/agents/{agent.id}/").status_code == 200
    before = Agent.objects.get(pk=agent.pk).kill_secret
    response = browser.post(f"/api/agents/{agent.id}/kill-secret")
    assert response.status_code == 403
    assert "CSRF" in error_of(response)["message"]
    assert Agent.objects.get(pk=agent.pk).kill_secret == before

    csrf = "a" * 32  # the cookie's secret, echoed in the header as a page would
    browser.cookies["csrftoken"] = csrf
    response = browser.post(f"/api/agents/{agent.id}/kill-secret", headers={"X-CSRFToken": csrf})
    assert response.status_code == 200
    assert Agent.objects.get(pk=agent.pk).kill_secret != before


@pytest.mark.django_db
def test_the_agents_api_is_throttled_per_user(alice, bob, agent):
    allowed = int(django_settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["agents"].split("/")[0])
    alice_client, bob_client = api_client(alice), api_client(bob)
    statuses = [alice_client.get("/api/agents/").status_code for _ in range(allowed)]
    assert set(statuses) == {200}
    response = alice_client.get("/api/agents/")
    assert response.status_code == 429
    assert error_of(response)["code"] == "throttled"
    assert bob_client.get("/api/agents/").status_code == 200


# --- Get, delete (create is billing's: billing/tests/test_apis.py) --------------------


@pytest.mark.docker
def test_delete_removes_the_container_frees_the_slot_and_keeps_the_trail(alice, running):
    droplet, container_id = running.droplet, running.container_id
    client = api_client(alice)
    response = client.delete(f"/api/agents/{running.id}/")
    assert response.status_code == 204
    with pytest.raises(DropletError) as excinfo:
        container_state(droplet, container_id)
    assert excinfo.value.not_found
    assert Droplet.objects.get(pk=droplet.pk).active_container_count == 0
    running.refresh_from_db()
    assert running.status == S.DELETED
    assert [e.to_status for e in running.events.all()][-1] == S.DELETED
    assert running.events.filter(actor=alice, source="owner", to_status=S.DELETED).exists()
    assert client.get(f"/api/agents/{running.id}/").status_code == 404
    assert client.delete(f"/api/agents/{running.id}/").status_code == 404


# --- Lifecycle actions -------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("action", "requested"), [("start", "running"), ("stop", "stopped")])
def test_an_action_the_state_does_not_allow_is_409_naming_the_state(
    alice, agent, action, requested
):
    response = api_client(alice).post(f"/api/agents/{agent.id}/{action}")
    assert response.status_code == 409
    assert error_of(response) == {
        "code": "invalid_state",
        "message": f"agent is pending_payment; it cannot go to {requested}",
    }
    assert Agent.objects.get(pk=agent.pk).status == S.PENDING_PAYMENT
    assert agent.events.count() == 1


@pytest.mark.django_db
def test_a_failed_agent_cannot_be_stopped_or_started(alice, agent):
    agent.transition(S.PROVISIONING, source="test")
    agent.transition(S.FAILED, source="test", reason="deploy failed: no capacity")
    client = api_client(alice)
    for action in ("start", "stop"):
        response = client.post(f"/api/agents/{agent.id}/{action}")
        assert response.status_code == 409
        assert error_of(response)["message"].startswith("agent is failed; it cannot go to ")


@pytest.mark.docker
def test_stop_then_start_through_the_api(alice, running):
    client = api_client(alice)
    response = client.post(f"/api/agents/{running.id}/stop")
    assert response.status_code == 200
    assert response.json()["status"] == "stopped"
    assert not container_state(running.droplet, running.container_id).running
    assert client.post(f"/api/agents/{running.id}/stop").status_code == 200  # idempotent

    response = client.post(f"/api/agents/{running.id}/start")
    assert response.status_code == 200
    assert response.json()["status"] == "running"
    assert container_state(running.droplet, running.container_id).running
    assert list(running.events.values_list("to_status", "source"))[-2:] == [
        ("stopped", "owner"),
        ("running", "owner"),
    ]


@pytest.mark.django_db
def test_start_on_an_unreachable_droplet_is_503_in_the_error_shape(alice, agent):
    droplet = DropletFactory(docker_url="unix:///run/saferclaw-no-such-engine.sock")
    place(agent, droplet, "c" * 64)
    agent.transition(S.STOPPED, source="test")
    response = api_client(alice).post(f"/api/agents/{agent.id}/start")
    assert response.status_code == 503
    error = error_of(response)
    assert error["code"] == "droplet_unreachable"
    assert "unreachable" in error["message"]
    assert Agent.objects.get(pk=agent.pk).status == S.STOPPED


@pytest.mark.django_db
def test_stop_on_an_unreachable_droplet_is_503_and_the_agent_counts_as_stopped(alice, agent):
    droplet = DropletFactory(docker_url="unix:///run/saferclaw-no-such-engine.sock")
    place(agent, droplet, "c" * 64)
    response = api_client(alice).post(f"/api/agents/{agent.id}/stop")
    assert response.status_code == 503
    assert error_of(response)["code"] == "droplet_unreachable"
    # Reconciliation stops the container once the droplet answers.
    assert Agent.objects.get(pk=agent.pk).status == S.STOPPED


@pytest.mark.django_db
def test_rotating_the_kill_secret_returns_a_new_one_once(alice, agent):
    before = Agent.objects.get(pk=agent.pk).kill_secret
    response = api_client(alice).post(f"/api/agents/{agent.id}/kill-secret")
    assert response.status_code == 200
    secret = response.json()["kill_secret"]
    assert secret != before
    assert Agent.objects.get(pk=agent.pk).kill_secret == secret
    assert AgentEvent.objects.filter(
        agent=agent, reason="kill secret rotated", actor=alice
    ).exists()


# --- Status ------------------------------------------------------------------------------------


@pytest.mark.docker
def test_status_reads_the_container_from_the_droplet(alice, running):
    today = timezone.now().date()
    Agent.objects.filter(pk=running.pk).update(
        tokens_today=1234, tokens_day=today, cost_this_period=Decimal("1.250000")
    )
    response = api_client(alice).get(f"/api/agents/{running.id}/status")
    assert response.status_code == 200
    status = response.json()
    assert status["status"] == "running"
    assert status["droplet"] == "d1-local"
    container = status["container"]
    assert container["id"] == running.container_id
    assert (container["running"], container["oom_killed"], container["restart_count"]) == (
        True,
        False,
        0,
    )
    assert status["resources"]["memory_bytes"] > 0
    assert status["resources"]["memory_limit_bytes"] == running.memory_limit_bytes
    assert (status["tokens_today"], status["daily_token_cap"]) == (1234, 200_000)
    assert (status["cost_this_period"], status["monthly_cost_cap"]) == ("1.250000", "10.00")
    assert status["container_error"] is None


@pytest.mark.docker
def test_status_of_a_stopped_container_has_its_exit_code(alice, running):
    stop_agent(agent=running)
    status = api_client(alice).get(f"/api/agents/{running.id}/status").json()
    assert status["container"]["running"] is False
    assert (
        status["container"]["exit_code"]
        == container_state(running.droplet, running.container_id).exit_code
    )
    assert status["container"]["status"] == "exited"
    assert status["resources"] is None


@pytest.mark.django_db
def test_status_counts_yesterdays_tokens_as_zero_today(alice, agent):
    Agent.objects.filter(pk=agent.pk).update(
        tokens_today=999, tokens_day=timezone.now().date() - dt.timedelta(days=1)
    )
    status = api_client(alice).get(f"/api/agents/{agent.id}/status").json()
    assert status["tokens_today"] == 0
    assert status["container"] is None


@pytest.mark.django_db
def test_status_says_when_the_droplet_does_not_answer(alice, agent):
    droplet = DropletFactory(docker_url="unix:///run/saferclaw-no-such-engine.sock")
    place(agent, droplet, "c" * 64)
    response = api_client(alice).get(f"/api/agents/{agent.id}/status")
    assert response.status_code == 200
    status = response.json()
    assert status["container"] is None
    assert "unreachable" in status["container_error"]


# --- Logs ----------------------------------------------------------------------------------------

SECRETS_SCRIPT = (
    "echo 'calling with sk-proj-abcdefghijklmnop1234 now'; "
    "echo 'Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl'; "
    "echo 'agent token sca_Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA'; "
    "echo 'api_key=hunter2hunter2 password: \"letmein\"'; "
    "echo 'hex 0123456789abcdef0123456789abcdef0123'; "
    "echo '-----BEGIN OPENSSH PRIVATE KEY-----'; "
    "echo 'b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAAB'; "
    "echo '-----END OPENSSH PRIVATE KEY-----'; "
    "echo 'agent 6f1c2a8e-1111-4222-8333-444455556666 is fine'; "
    "echo done"
)


@pytest.fixture
def busybox(droplet_env):
    return droplet_env["SAFERCLAW_BUSYBOX_IMAGE"]


def wait_until_exited(agent: Agent) -> None:
    import time

    while container_state(agent.droplet, agent.container_id).running:
        time.sleep(0.1)


@pytest.mark.docker
def test_logs_are_redacted(alice, local_droplet, busybox):
    agent = run_script(
        create_agent(owner=alice, name="talker"), local_droplet, busybox, SECRETS_SCRIPT
    )
    wait_until_exited(agent)
    response = api_client(alice).get(f"/api/agents/{agent.id}/logs")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    text = b"".join(response.streaming_content).decode()
    for secret in (
        "sk-proj-abcdefghijklmnop1234",
        "eyJhbGciOiJIUzI1NiJ9",
        "sca_Zm9vYmFy",
        "hunter2",
        "letmein",
        "0123456789abcdef0123456789abcdef",
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ",
    ):
        assert secret not in text
    assert "calling with [REDACTED] now" in text
    assert "Authorization: Bearer [REDACTED]" in text
    assert "agent 6f1c2a8e-1111-4222-8333-444455556666 is fine" in text
    assert text.rstrip().endswith("done")


@pytest.mark.docker
def test_logs_tail_returns_the_last_lines(alice, local_droplet, busybox):
    script = "for i in 1 2 3 4 5 6 7 8 9; do echo line-$i; done"
    agent = run_script(create_agent(owner=alice, name="counter"), local_droplet, busybox, script)
    wait_until_exited(agent)
    response = api_client(alice).get(f"/api/agents/{agent.id}/logs?tail=3")
    assert b"".join(response.streaming_content).decode().split() == ["line-7", "line-8", "line-9"]


FOLLOW_SCRIPT = "echo first; sleep 2; echo second; sleep 1; echo last"


@pytest.mark.docker
def test_followed_logs_stream_until_the_container_stops(alice, local_droplet, busybox):
    agent = run_script(
        create_agent(owner=alice, name="slow"), local_droplet, busybox, FOLLOW_SCRIPT
    )
    response = api_client(alice).get(f"/api/agents/{agent.id}/logs?follow=1&tail=100")
    chunks = iter(response.streaming_content)
    first = next(chunks)
    # Streamed, not buffered: the first line arrives while the container still runs.
    assert first == b"first\n"
    assert container_state(agent.droplet, agent.container_id).running
    rest = b"".join(chunks)  # ends on its own when the container stops
    assert rest == b"second\nlast\n"
    assert not container_state(agent.droplet, agent.container_id).running


@pytest.mark.docker
def test_followed_logs_stream_under_asgi_until_the_container_stops(alice, local_droplet, busybox):
    agent = run_script(
        create_agent(owner=alice, name="slow"), local_droplet, busybox, FOLLOW_SCRIPT
    )
    _, token = AuthToken.objects.create(alice)
    droplet, container_id = agent.droplet, agent.container_id

    async def follow() -> tuple[bytes, bool, bytes]:
        response = await AsyncClient().get(
            f"/api/agents/{agent.id}/logs?follow=true",
            headers={"Authorization": f"Token {token}"},
        )
        assert response.status_code == 200
        chunks = aiter(response.streaming_content)
        first = await anext(chunks)
        still_running = container_state(droplet, container_id).running
        rest = b"".join([chunk async for chunk in chunks])
        return first, still_running, rest

    first, still_running, rest = async_to_sync(follow)()
    assert (first, still_running, rest) == (b"first\n", True, b"second\nlast\n")


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)  # closing a response ends the request, as in a server
def test_a_client_that_goes_away_ends_the_followed_stream(alice, local_droplet, busybox):
    script = "echo hello; sleep 60"
    agent = run_script(create_agent(owner=alice, name="quiet"), local_droplet, busybox, script)
    response = api_client(alice).get(f"/api/agents/{agent.id}/logs?follow=1")
    chunks = response.streaming_content
    assert next(chunks) == b"hello\n"
    response.close()  # what a WSGI server does when the client disconnects
    assert next(chunks, None) is None  # the stream (and its engine connection) ended
    assert container_state(agent.droplet, agent.container_id).running


@pytest.mark.django_db
def test_logs_of_an_agent_without_a_container_is_409(alice, agent):
    response = api_client(alice).get(f"/api/agents/{agent.id}/logs?follow=1")
    assert response.status_code == 409
    assert error_of(response) == {
        "code": "no_container",
        "message": "agent is pending_payment and has no container",
    }


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["tail=-1", "tail=100001", "tail=abc", "follow=maybe"])
def test_logs_refuse_bad_parameters(alice, agent, query):
    response = api_client(alice).get(f"/api/agents/{agent.id}/logs?{query}")
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid"


@pytest.mark.django_db
def test_logs_on_an_unreachable_droplet_is_503(alice, agent):
    place(agent, DropletFactory(docker_url="unix:///run/saferclaw-no-such-engine.sock"), "c" * 64)
    response = api_client(alice).get(f"/api/agents/{agent.id}/logs")
    assert response.status_code == 503
    assert error_of(response)["code"] == "droplet_unreachable"


def test_redaction_keeps_ordinary_text():
    line = "GET /usr/lib/python3.11/site-packages/httpx/_transports/default.py 200 in 12 ms"
    assert redact(line) == line
    assert redact("token=abc123xyz") == "token=[REDACTED]"
    assert redact("key AKIAIOSFODNN7EXAMPLE here") == "key [REDACTED] here"
    assert redact("random Xk9fQ2mZ7pL4wR8tY1vB6nC3hJ5dG0sA end") == "random [REDACTED] end"


def test_the_redactor_holds_a_partial_line_and_drops_key_blocks():
    redactor = LogRedactor()
    assert redactor.feed(b"half a li") == b""
    assert redactor.feed(b"ne sk-abcdefghijkl\n-----BEGIN RSA PRIVATE KEY-----\nMIIEow") == (
        b"half a line [REDACTED]\n[REDACTED PRIVATE KEY]\n"
    )
    assert redactor.feed(b"IBAAKCAQEA\n-----END RSA PRIVATE KEY----- after\n") == b" after\n"
    assert (
        redactor.feed(b"x" * (LogRedactor.MAX_LINE + 1))
        == b"x" * (LogRedactor.MAX_LINE + 1) + b"\n"
    )
    assert redactor.flush() == b""


# --- Usage -----------------------------------------------------------------------------------


def ledger(agent: Agent, day: dt.date, *, tokens: tuple[int, int], cost: str, **fields) -> None:
    at = dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC)
    record = UsageRecord.objects.create(
        agent=agent,
        provider="openai",
        model="gpt-4o-mini",
        status=fields.pop("status", UsageStatus.OK),
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        cost=Decimal(cost),
        settled_at=fields.pop("settled_at", at),
        **fields,
    )
    UsageRecord.objects.filter(pk=record.pk).update(created_at=at)


@pytest.mark.django_db
def test_usage_sums_settled_calls_per_utc_day(alice, bob, agent):
    d1, d2 = dt.date(2026, 3, 1), dt.date(2026, 3, 3)
    ledger(agent, d1, tokens=(100, 50), cost="0.010000")
    ledger(agent, d1, tokens=(10, 5), cost="0.001500")
    ledger(agent, d2, tokens=(1, 2), cost="0.000300", status=UsageStatus.CLIENT_GONE)
    ledger(agent, d2, tokens=(1000, 0), cost="1.0", status=UsageStatus.PENDING, settled_at=None)
    ledger(create_agent(owner=bob, name="b"), d1, tokens=(7, 7), cost="5.0")
    ledger(agent, dt.date(2026, 3, 4), tokens=(9, 9), cost="9.0")  # outside the range

    response = api_client(alice).get(f"/api/agents/{agent.id}/usage?from=2026-03-01&to=2026-03-03")
    assert response.status_code == 200
    usage = response.json()
    assert usage["days"] == [
        {"date": "2026-03-01", "tokens": 165, "cost": "0.011500", "calls": 2},
        {"date": "2026-03-02", "tokens": 0, "cost": "0.000000", "calls": 0},
        {"date": "2026-03-03", "tokens": 3, "cost": "0.000300", "calls": 1},
    ]
    assert (usage["total_tokens"], usage["total_cost"]) == (168, "0.011800")


@pytest.mark.django_db
def test_usage_defaults_to_the_last_30_days(alice, agent):
    usage = api_client(alice).get(f"/api/agents/{agent.id}/usage").json()
    assert len(usage["days"]) == 30
    assert usage["days"][-1]["date"] == timezone.now().date().isoformat()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query",
    [
        "from=2026-03-05&to=2026-03-01",
        "from=2024-01-01&to=2026-01-01",
        "from=yesterday",
        "to=2026-02-30",
    ],
)
def test_usage_refuses_a_bad_range(alice, agent, query):
    response = api_client(alice).get(f"/api/agents/{agent.id}/usage?{query}")
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid"
