"""The kill switch webhook, the kill_agent command and the admin action, on real engines."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import json
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import redis
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.utils import timezone
from knox.models import AuthToken

from agents.kill_switch import kill_agent
from agents.models import (
    Agent,
    AgentEvent,
    AgentStatus,
    KillSwitchCall,
    UsedKillSignature,
)
from agents.services import create_agent, deploy_agent, start_agent
from agents.tasks import retry_stop_container
from agents.tests.factories import paid
from agents.tokens import issue_agent_token, token_agent
from droplets.containers import container_state
from droplets.docker_client import DropletError
from droplets.models import Droplet, DropletStatus
from droplets.tests.factories import DropletFactory
from safer_claw.accounts.tests.factories import UserFactory
from safer_claw.accounts.tests.helpers import enable_totp, sign_in
from safer_claw.celery import app as celery_app

S = AgentStatus
OPERATOR_SECRET = "operator-secret-" + "o" * 32
OLD_OPERATOR_SECRET = "old-operator-secret-" + "p" * 32


def sign(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Headers for a kill call, built from DESIGN.md's text rather than our code."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-SaferClaw-Timestamp": ts, "X-SaferClaw-Signature": f"v1={digest}"}


def kill(client, agent_id, body: bytes = b"", *, secret=OPERATOR_SECRET, headers=None, **extra):
    headers = sign(secret, body) if headers is None else headers
    return client.post(
        f"/webhooks/agent-kill/{agent_id}",
        data=body,
        content_type="application/json",
        headers=headers,
        **extra,
    )


def token_works(client, token: str) -> bool:
    """Whether the agent API (as the gateway would) accepts the token right now."""
    response = client.post("/agent-api/v1/heartbeat", headers={"Authorization": f"Bearer {token}"})
    return response.status_code == 204


def container_token(engines, agent: Agent) -> str:
    engine = engines["d1"] if agent.droplet.name == "d1-local" else engines["d2"]
    env = engine.api.inspect_container(agent.container_id)["Config"]["Env"]
    return dict(item.split("=", 1) for item in env)["AGENT_TOKEN"]


def is_running(agent: Agent) -> bool:
    return container_state(agent.droplet, agent.container_id).running


@pytest.fixture(autouse=True)
def operator_secret(settings):
    settings.KILL_SWITCH_SECRET = [OPERATOR_SECRET]


@pytest.fixture
def running(alice, local_droplet, engines):
    """Alice's agent running in a real container, and the token the container holds."""
    agent = deploy_agent(agent=paid(create_agent(owner=alice, name="runner", provider_key="sk-x")))
    return agent, container_token(engines, agent)


def unreachable_agent(owner, name="far") -> tuple[Agent, str]:
    """A running agent on a droplet whose engine does not answer."""
    droplet = DropletFactory(docker_url="unix:///run/saferclaw-no-such-engine.sock")
    agent = paid(create_agent(owner=owner, name=name))
    agent.transition(S.PROVISIONING, source="test")
    agent.transition(S.RUNNING, source="test", droplet=droplet, container_id="c" * 64)
    Droplet.objects.filter(pk=droplet.pk).update(active_container_count=1)
    return agent, issue_agent_token(agent=agent)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def celery_broker():
    """Celery sending to a real broker (not eager) at a given URL, restored after."""
    conf = celery_app.conf
    saved = {
        "broker_url": conf.broker_url,
        "task_always_eager": conf.task_always_eager,
        "broker_transport_options": conf.broker_transport_options,
    }

    def use(url: str) -> None:
        conf.update(broker_url=url, task_always_eager=False, broker_transport_options={})

    yield use
    conf.update(saved)


@pytest.fixture
def redis_down(settings, celery_broker):
    """Redis stopped, as far as this process can tell: cache and broker point at a dead port."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": dead}
    }
    celery_broker(dead)
    return dead


# --- A valid kill ----------------------------------------------------------------------------


@pytest.mark.docker
def test_a_valid_kill_revokes_the_token_then_stops_the_container(client, running):
    agent, token = running
    assert token_works(client, token)

    response = kill(client, agent.id)

    assert response.status_code == 200
    assert response.json() == {
        "agent": str(agent.id),
        "status": "killed",
        "token_revoked": True,
        "container": "stopped",
        "already_killed": False,
    }
    assert not token_works(client, token)
    assert token_agent(token) is None
    assert not is_running(agent)
    agent.refresh_from_db()
    assert agent.status == S.KILLED
    event = agent.events.last()
    assert (event.source, event.to_status, event.actor) == ("kill_switch", "killed", None)
    assert "operator secret" in event.reason
    call = KillSwitchCall.objects.get()
    assert (call.accepted, call.status_code, call.outcome, call.signed_with, call.action) == (
        True,
        200,
        "killed",
        "operator",
        "stop",
    )
    assert (call.agent, call.source_ip) == (agent, "127.0.0.1")


@pytest.mark.docker
def test_the_owners_own_kill_secret_works_and_is_recorded_as_the_owner(client, alice, running):
    agent, token = running
    response = kill(client, agent.id, secret=Agent.objects.get(pk=agent.pk).kill_secret)
    assert response.status_code == 200
    assert not token_works(client, token)
    assert not is_running(agent)
    assert agent.events.last().actor == alice
    assert KillSwitchCall.objects.get().signed_with == "owner"


@pytest.mark.docker
def test_remove_removes_the_container_and_frees_the_slot(client, running):
    agent, token = running
    droplet, container_id = agent.droplet, agent.container_id
    response = kill(client, agent.id, b'{"action": "remove"}')
    assert response.status_code == 200
    assert response.json()["container"] == "removed"
    with pytest.raises(DropletError) as excinfo:
        container_state(droplet, container_id)
    assert excinfo.value.not_found
    assert Droplet.objects.get(pk=droplet.pk).active_container_count == 0
    agent.refresh_from_db()
    assert (agent.status, agent.droplet_id, agent.container_id) == (S.KILLED, None, "")
    assert not token_works(client, token)


@pytest.mark.docker
def test_both_operator_secrets_work_during_a_rotation(client, settings, alice, local_droplet):
    settings.KILL_SWITCH_SECRET = [OPERATOR_SECRET, OLD_OPERATOR_SECRET]
    new = deploy_agent(agent=paid(create_agent(owner=alice, name="a")))
    old = deploy_agent(agent=paid(create_agent(owner=alice, name="b")))
    assert kill(client, new.id, secret=OPERATOR_SECRET).status_code == 200
    assert kill(client, old.id, secret=OLD_OPERATOR_SECRET).status_code == 200
    assert not is_running(new)
    assert not is_running(old)


@pytest.mark.docker
def test_a_body_naming_the_agent_binds_the_signature_to_it(client, running):
    agent, _ = running
    body = json.dumps({"action": "stop", "agent_id": str(agent.id)}).encode()
    assert kill(client, agent.id, body).status_code == 200
    assert not is_running(agent)


@pytest.mark.docker
def test_killing_a_killed_agent_again_says_so(client, running):
    agent, _ = running
    assert kill(client, agent.id, b'{"action": "stop"}').status_code == 200
    response = kill(client, agent.id, b'{"action":"stop"}')  # another body: another signature
    assert response.status_code == 200
    assert response.json()["already_killed"] is True
    assert agent.events.filter(to_status=S.KILLED).count() == 1
    assert KillSwitchCall.objects.filter(outcome="already_killed").count() == 1


@pytest.mark.docker
def test_a_killed_agent_starts_again_only_when_its_owner_asks(client, alice, bob, running, engines):
    agent, old_token = running
    kill(client, agent.id)
    bob_token = AuthToken.objects.create(bob)[1]
    response = client.post(
        f"/api/agents/{agent.id}/start", headers={"Authorization": f"Token {bob_token}"}
    )
    assert response.status_code == 404
    assert Agent.objects.get(pk=agent.pk).status == S.KILLED

    alice_token = AuthToken.objects.create(alice)[1]
    response = client.post(
        f"/api/agents/{agent.id}/start", headers={"Authorization": f"Token {alice_token}"}
    )
    assert response.status_code == 200
    agent.refresh_from_db()
    assert agent.status == S.RUNNING
    assert is_running(agent)
    assert token_works(client, container_token(engines, agent))  # a new container, a new token
    assert not token_works(client, old_token)


@pytest.mark.django_db
def test_an_agent_awaiting_payment_can_be_killed_so_payment_cannot_start_it(client, agent):
    response = kill(client, agent.id)
    assert response.status_code == 200
    assert Agent.objects.get(pk=agent.pk).status == S.KILLED
    assert agent.tokens.filter(revoked_at__isnull=True).count() == 0


# --- Refused calls change nothing ---------------------------------------------------------


TS, SIG = "X-SaferClaw-Timestamp", "X-SaferClaw-Signature"
STOP_BODY = b'{"action": "stop"}'
WRONG_SECRET = "not-the-secret-" + "x" * 32
OTHER_AGENTS_SECRET = "<the kill secret of another agent>"


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    method: str = "post"
    agent: str = "this"  # "this", "unknown", or the path segment to send
    body: bytes = STOP_BODY
    signed_body: bytes | None = None  # what was signed, when not the body sent
    secret: str = OPERATOR_SECRET
    age: int = 0  # seconds between signing and sending
    tamper: Callable[[dict[str, str]], dict[str, str]] = lambda headers: headers


REFUSALS = {
    "GET": Refusal(405, "method_not_allowed", method="get"),
    "PUT": Refusal(405, "method_not_allowed", method="put"),
    "body too large": Refusal(413, "body_too_large", body=b'{"pad": "%s"}' % (b"x" * 2000)),
    "no timestamp": Refusal(401, "missing_signature", tamper=lambda h: {SIG: h[SIG]}),
    "no signature": Refusal(401, "missing_signature", tamper=lambda h: {TS: h[TS]}),
    "no headers": Refusal(401, "missing_signature", tamper=lambda h: {}),
    "signature scheme v2": Refusal(
        401, "malformed_signature", tamper=lambda h: {**h, SIG: h[SIG].replace("v1=", "v2=")}
    ),
    "signature not hex": Refusal(
        401, "malformed_signature", tamper=lambda h: {**h, SIG: "v1=" + "z" * 64}
    ),
    "signature truncated": Refusal(
        401, "malformed_signature", tamper=lambda h: {**h, SIG: h[SIG][:-2]}
    ),
    "timestamp not a number": Refusal(
        401, "malformed_signature", tamper=lambda h: {**h, TS: "yesterday"}
    ),
    "timestamp 301 s old": Refusal(401, "stale_timestamp", age=301),
    "timestamp 301 s ahead": Refusal(401, "stale_timestamp", age=-301),
    "wrong secret": Refusal(401, "invalid_signature", secret=WRONG_SECRET),
    "another agent's kill secret": Refusal(401, "invalid_signature", secret=OTHER_AGENTS_SECRET),
    "body changed after signing": Refusal(
        401, "invalid_signature", body=b'{"action": "remove"}', signed_body=STOP_BODY
    ),
    "timestamp changed after signing": Refusal(
        401, "invalid_signature", tamper=lambda h: {**h, TS: str(int(h[TS]) - 1)}
    ),
    "unknown agent": Refusal(401, "invalid_signature", agent="unknown"),
    "not an agent id": Refusal(401, "invalid_signature", agent="not-a-uuid"),
    "body not JSON": Refusal(400, "invalid_body", body=b"stop it"),
    "body not an object": Refusal(400, "invalid_body", body=b"[1]"),
    "unknown action": Refusal(400, "invalid_action", body=b'{"action": "pause"}'),
    "body names another agent": Refusal(
        400, "agent_mismatch", body=b'{"agent_id": "6f1c2a8e-1111-4222-8333-444455556666"}'
    ),
}


@pytest.mark.docker
@pytest.mark.parametrize("name", REFUSALS)
def test_a_refused_call_changes_nothing(client, alice, running, name):
    agent, token = running
    case = REFUSALS[name]
    secret = case.secret
    if secret == OTHER_AGENTS_SECRET:
        secret = create_agent(owner=alice, name="other").kill_secret
    signed = sign(secret, case.signed_body or case.body, int(time.time()) - case.age)
    agent_id = {"this": str(agent.id), "unknown": str(uuid.uuid4())}.get(case.agent, case.agent)
    events_before = agent.events.count()

    url = f"/webhooks/agent-kill/{agent_id}"
    headers = case.tamper(signed)
    if case.method == "get":
        response = client.get(url, headers=headers)
    else:
        response = client.generic(
            case.method.upper(), url, case.body, content_type="application/json", headers=headers
        )

    assert (response.status_code, response.json()["error"]["code"]) == (case.status, case.code)
    assert Agent.objects.get(pk=agent.pk).status == S.RUNNING
    assert is_running(agent)
    assert token_works(client, token)
    assert agent.events.count() == events_before
    assert not UsedKillSignature.objects.exists()
    call = KillSwitchCall.objects.get()
    assert (call.accepted, call.status_code, call.outcome) == (False, case.status, case.code)
    assert call.agent_id_given == agent_id
    if case.status == 405:
        assert response["Allow"] == "POST"


@pytest.mark.django_db
def test_an_unknown_agent_gets_exactly_the_answer_of_a_bad_signature(client, agent):
    body = b""
    unknown = kill(client, uuid.uuid4(), body)
    bad = kill(client, agent.id, body, secret="not-the-secret-" + "x" * 32)
    assert (unknown.status_code, unknown.content) == (bad.status_code, bad.content)
    assert unknown.json()["error"]["code"] == "invalid_signature"


@pytest.mark.docker
def test_a_replayed_signature_is_refused_and_changes_nothing(client, alice, running, engines):
    agent, _ = running
    body = b'{"action": "stop"}'
    headers = sign(OPERATOR_SECRET, body)
    assert kill(client, agent.id, body, headers=headers).status_code == 200
    # The owner starts it again; a captured kill replayed must not stop it.
    agent = start_agent(agent=agent, actor=alice)
    token = container_token(engines, agent)

    response = kill(client, agent.id, body, headers=headers)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "replayed_signature"
    agent.refresh_from_db()
    assert agent.status == S.RUNNING
    assert is_running(agent)
    assert token_works(client, token)
    assert KillSwitchCall.objects.filter(accepted=False, outcome="replayed_signature").count() == 1


@pytest.mark.django_db
def test_the_replay_store_forgets_signatures_once_they_cannot_pass_again(client, alice):
    agent, _ = unreachable_agent(alice)
    now = timezone.now()
    UsedKillSignature.objects.create(signature="a" * 64, created_at=now - dt.timedelta(minutes=11))
    UsedKillSignature.objects.create(signature="b" * 64, created_at=now - dt.timedelta(minutes=9))
    assert kill(client, agent.id).status_code == 202
    kept = set(UsedKillSignature.objects.values_list("signature", flat=True))
    assert "a" * 64 not in kept
    assert "b" * 64 in kept
    assert len(kept) == 2


@pytest.mark.django_db
def test_a_rotated_kill_secret_stops_working(client, alice):
    agent, token = unreachable_agent(alice)
    old_secret = Agent.objects.get(pk=agent.pk).kill_secret
    api_token = AuthToken.objects.create(alice)[1]
    new_secret = client.post(
        f"/api/agents/{agent.id}/kill-secret", headers={"Authorization": f"Token {api_token}"}
    ).json()["kill_secret"]
    assert kill(client, agent.id, secret=old_secret).status_code == 401
    assert token_works(client, token)
    assert kill(client, agent.id, secret=new_secret).status_code == 202


# --- Droplet unreachable, Redis and Celery down ---------------------------------------------


@pytest.mark.django_db
def test_an_unreachable_droplet_still_kills_and_queues_a_retry(client, alice, celery_broker):
    url = "redis://127.0.0.1:6379/11"
    queue = redis.Redis.from_url(url)
    queue.delete("celery")
    celery_broker(url)
    agent, token = unreachable_agent(alice)

    response = kill(client, agent.id)

    assert response.status_code == 202
    assert response.json()["container"] == "pending"
    assert Agent.objects.get(pk=agent.pk).status == S.KILLED
    assert not token_works(client, token)
    (message,) = queue.lrange("celery", 0, -1)
    queue.delete("celery")
    message = json.loads(message)
    assert message["headers"]["task"] == "agents.tasks.retry_stop_container"
    assert str(agent.id) in message["headers"]["argsrepr"]


@pytest.mark.django_db
def test_with_redis_down_an_unreachable_droplet_still_kills(client, alice, redis_down):
    agent, token = unreachable_agent(alice)
    response = kill(client, agent.id, b'{"action": "remove"}')
    assert response.status_code == 202
    assert Agent.objects.get(pk=agent.pk).status == S.KILLED
    assert not token_works(client, token)
    assert KillSwitchCall.objects.get().accepted


@pytest.mark.docker
def test_with_redis_down_a_valid_kill_stops_the_container_and_the_token(
    client, running, redis_down
):
    with pytest.raises(redis.exceptions.ConnectionError):
        cache.get("proof-that-redis-is-down")
    agent, token = running

    response = kill(client, agent.id)

    assert response.status_code == 200
    assert not token_works(client, token)
    assert not is_running(agent)
    assert Agent.objects.get(pk=agent.pk).status == S.KILLED


@pytest.mark.docker
def test_the_retry_task_stops_the_container_once_the_droplet_answers(client, running):
    agent, token = running
    # The health check has given up on the droplet: the kill does not wait for it.
    Droplet.objects.filter(pk=agent.droplet_id).update(status=DropletStatus.UNREACHABLE)
    response = kill(client, agent.id)
    assert response.status_code == 202
    assert not token_works(client, token)
    assert is_running(agent)

    Droplet.objects.filter(pk=agent.droplet_id).update(status=DropletStatus.ACTIVE)
    retry_stop_container.apply(args=(str(agent.id), False), throw=True)
    assert not is_running(agent)


@pytest.mark.docker
def test_the_retry_task_leaves_an_agent_started_again_alone(alice, running):
    agent, _ = running
    Droplet.objects.filter(pk=agent.droplet_id).update(status=DropletStatus.UNREACHABLE)
    kill_agent(agent=agent)
    Droplet.objects.filter(pk=agent.droplet_id).update(status=DropletStatus.ACTIVE)
    agent = start_agent(agent=agent, actor=alice)
    retry_stop_container.apply(args=(str(agent.id), True), throw=True)
    assert is_running(agent)


# --- Command and admin ------------------------------------------------------------------------


@pytest.mark.docker
def test_kill_agent_command(client, running):
    agent, token = running
    out = io.StringIO()
    call_command("kill_agent", str(agent.id), stdout=out)
    assert out.getvalue().strip() == f"killed {agent.id}: token revoked, container stopped"
    assert not token_works(client, token)
    assert not is_running(agent)
    assert agent.events.last().source == "operator"


@pytest.mark.django_db
def test_kill_agent_command_refuses_an_unknown_agent():
    with pytest.raises(CommandError, match="no agent with id"):
        call_command("kill_agent", str(uuid.uuid4()))


@pytest.mark.docker
def test_admin_kills_all_agents_of_a_user_and_no_one_elses(client, alice, bob, running, engines):
    agent, token = running
    unpaid = create_agent(owner=alice, name="second")
    bobs = deploy_agent(agent=paid(create_agent(owner=bob, name="bobs")))
    operator = UserFactory(is_staff=True, is_superuser=True)
    sign_in(client, operator, totp_secret=enable_totp(operator))  # operators need the code

    response = client.post(
        "/admin/accounts/user/",
        {"action": "kill_all_agents", "_selected_action": [str(alice.pk)]},
        follow=True,
    )

    assert response.status_code == 200
    messages = [str(message) for message in response.context["messages"]]
    assert messages == ["alice@example.com: 2 agent(s) killed"]
    assert Agent.objects.get(pk=agent.pk).status == S.KILLED
    assert not is_running(agent)
    assert not token_works(client, token)
    assert Agent.objects.get(pk=unpaid.pk).status == S.KILLED  # payment cannot start it now
    assert Agent.objects.get(pk=bobs.pk).status == S.RUNNING
    assert is_running(bobs)
    assert AgentEvent.objects.filter(agent=agent, actor=operator, source="operator").exists()


@pytest.mark.django_db
def test_admin_lists_kill_switch_calls(client, agent):
    kill(client, agent.id, secret=WRONG_SECRET)
    operator = UserFactory(is_staff=True, is_superuser=True)
    sign_in(client, operator, totp_secret=enable_totp(operator))
    response = client.get("/admin/agents/killswitchcall/")
    assert response.status_code == 200
    assert str(agent.id) in response.content.decode()
    assert "invalid_signature" in response.content.decode()
