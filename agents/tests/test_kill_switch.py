"""The kill switch webhook, the kill_agent command and the admin action, on real engines."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from knox.models import AuthToken

from agents.kill_switch import curl_recipe, kill_agent
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
from agents.webhooks import close_kill_threads
from droplets.containers import container_state
from droplets.docker_client import DropletError
from droplets.models import Droplet, DropletStatus
from droplets.tests.factories import DropletFactory
from gateway.proxy import close_all as close_gateway
from gateway.tests.live import start_live_server
from safer_claw.accounts.tests.factories import UserFactory
from safer_claw.accounts.tests.helpers import enable_totp, sign_in
from safer_claw.celery import app as celery_app
from safer_claw.tests.test_encryption import raw_column, write_raw_column

S = AgentStatus
OPERATOR_SECRET = "operator-secret-" + "o" * 32
OLD_OPERATOR_SECRET = "old-operator-secret-" + "p" * 32


def sign(
    secret: str,
    body: bytes,
    agent_id: object,
    timestamp: int | None = None,
    *,
    version: str = "v2",
) -> dict[str, str]:
    """Headers for a kill call, built from DESIGN.md's text rather than our code."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    prefix = f"{ts}.{agent_id}." if version == "v2" else f"{ts}."
    digest = hmac.new(secret.encode(), prefix.encode() + body, hashlib.sha256).hexdigest()
    return {"X-SaferClaw-Timestamp": ts, "X-SaferClaw-Signature": f"{version}={digest}"}


def kill(client, agent_id, body: bytes = b"", *, secret=OPERATOR_SECRET, headers=None, **extra):
    headers = sign(secret, body, agent_id) if headers is None else headers
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


# --- The signature names its agent (v2) -------------------------------------------------------


@pytest.mark.django_db
def test_an_operator_script_stops_two_agents_in_the_same_second_with_the_same_body(client, alice):
    first, first_token = unreachable_agent(alice, "first")
    second, second_token = unreachable_agent(alice, "second")
    now = int(time.time())

    responses = [
        kill(client, a.id, STOP_BODY, headers=sign(OPERATOR_SECRET, STOP_BODY, a.id, now))
        for a in (first, second)
    ]

    assert [r.status_code for r in responses] == [202, 202]
    assert not token_works(client, first_token)
    assert not token_works(client, second_token)
    assert Agent.objects.filter(status=S.KILLED).count() == 2
    used = UsedKillSignature.objects.order_by("created_at")
    assert [row.agent_id for row in used] == [first.id, second.id]


@pytest.mark.django_db
def test_a_signature_sent_to_a_mistyped_id_cannot_stop_another_agent(client, alice):
    agent, token = unreachable_agent(alice)
    mistyped = str(agent.id)[:-1] + ("0" if str(agent.id)[-1] != "0" else "1")
    headers = sign(OPERATOR_SECRET, STOP_BODY, mistyped)

    assert kill(client, mistyped, STOP_BODY, headers=headers).status_code == 401
    response = kill(client, agent.id, STOP_BODY, headers=headers)  # an eavesdropper retargets it

    assert (response.status_code, response.json()["error"]["code"]) == (401, "invalid_signature")
    assert token_works(client, token)
    assert Agent.objects.get(pk=agent.pk).status == S.RUNNING


@pytest.mark.django_db
def test_an_accepted_signature_cannot_stop_another_agent(client, alice):
    first, _ = unreachable_agent(alice, "first")
    second, second_token = unreachable_agent(alice, "second")
    headers = sign(OPERATOR_SECRET, STOP_BODY, first.id)
    assert kill(client, first.id, STOP_BODY, headers=headers).status_code == 202

    response = kill(client, second.id, STOP_BODY, headers=headers)

    assert response.status_code == 401
    assert token_works(client, second_token)
    assert Agent.objects.get(pk=second.pk).status == S.RUNNING


@pytest.mark.django_db
def test_a_v1_signature_that_names_no_agent_stops_no_agent(client, alice):
    """The hole v2 closes: a v1 signature over a body without agent_id fits every agent."""
    agent, token = unreachable_agent(alice)
    headers = sign(OPERATOR_SECRET, STOP_BODY, agent.id, version="v1")

    response = kill(client, agent.id, STOP_BODY, headers=headers)

    assert (response.status_code, response.json()["error"]["code"]) == (401, "unbound_signature")
    assert "v2" in response.json()["error"]["message"]
    assert token_works(client, token)
    assert not UsedKillSignature.objects.exists()


@pytest.mark.django_db
def test_v1_still_works_while_deprecated_when_the_body_names_the_agent(client, alice, caplog):
    agent, token = unreachable_agent(alice)
    body = json.dumps({"action": "stop", "agent_id": str(agent.id)}).encode()

    response = kill(
        client, agent.id, body, headers=sign(OPERATOR_SECRET, body, agent.id, version="v1")
    )

    assert response.status_code == 202
    assert response["Deprecation"] == "true"
    assert not token_works(client, token)
    assert "deprecated v1 signature" in caplog.text


@pytest.mark.django_db
def test_v1_is_refused_once_the_deprecation_period_ends(client, alice, settings):
    settings.KILL_SWITCH_ACCEPT_V1 = False
    agent, token = unreachable_agent(alice)
    body = json.dumps({"action": "stop", "agent_id": str(agent.id)}).encode()

    response = kill(
        client, agent.id, body, headers=sign(OPERATOR_SECRET, body, agent.id, version="v1")
    )

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unsupported_signature_version"
    assert token_works(client, token)
    # v2 works, and answers without the deprecation header.
    response = kill(client, agent.id, body)
    assert response.status_code == 202
    assert "Deprecation" not in response


@pytest.mark.django_db
def test_the_replay_store_is_keyed_by_agent_and_signature(client, alice):
    first, _ = unreachable_agent(alice, "first")
    second, second_token = unreachable_agent(alice, "second")
    headers = sign(OPERATOR_SECRET, STOP_BODY, second.id)
    digest = headers["X-SaferClaw-Signature"].removeprefix("v2=")
    # The same signature already used for another agent does not block this one.
    UsedKillSignature.objects.create(agent=first, signature=digest, created_at=timezone.now())

    assert kill(client, second.id, STOP_BODY, headers=headers).status_code == 202
    assert not token_works(client, second_token)
    assert UsedKillSignature.objects.filter(agent=second, signature=digest).exists()


# --- A kill secret that cannot be opened -------------------------------------------------------


def make_kill_secret_unopenable(agent: Agent, how: str, settings) -> None:
    if how == "tampered":
        stored = raw_column(agent, "kill_secret")
        write_raw_column(
            agent, stored[:-4] + ("AAAA" if stored[-4:] != "AAAA" else "BBBB"), "kill_secret"
        )
    else:  # sealed under a key that has since left the ring
        t2, t1 = settings.ENCRYPTION_KEYS.split(",")
        settings.ENCRYPTION_KEYS = t1
        row = Agent.objects.get(pk=agent.pk)
        row.kill_secret = "an-old-owner-secret-" + "x" * 20
        row.save(update_fields=["kill_secret"])
        settings.ENCRYPTION_KEYS = t2


@pytest.mark.django_db
@pytest.mark.parametrize("version", ["v2", "v1"])
@pytest.mark.parametrize("how", ["tampered", "key removed from the ring"])
def test_an_operator_kill_works_when_the_owner_secret_cannot_be_opened(
    client, alice, settings, caplog, how, version
):
    agent, token = unreachable_agent(alice)
    make_kill_secret_unopenable(agent, how, settings)
    body = json.dumps({"action": "stop", "agent_id": str(agent.id)}).encode()

    response = kill(
        client, agent.id, body, headers=sign(OPERATOR_SECRET, body, agent.id, version=version)
    )

    assert response.status_code == 202
    assert not token_works(client, token)
    assert KillSwitchCall.objects.get().signed_with == "operator"
    # Operator secrets are tried first: the owner's secret was not even opened.
    assert "cannot be opened" not in caplog.text


@pytest.mark.django_db
@pytest.mark.parametrize("how", ["tampered", "key removed from the ring"])
def test_an_owner_secret_that_cannot_be_opened_counts_as_none(client, alice, settings, caplog, how):
    agent, token = unreachable_agent(alice)
    secret = Agent.objects.get(pk=agent.pk).kill_secret
    make_kill_secret_unopenable(agent, how, settings)

    response = kill(client, agent.id, secret=secret)

    assert (response.status_code, response.json()["error"]["code"]) == (401, "invalid_signature")
    assert token_works(client, token)
    assert f"the kill secret of agent {agent.id} cannot be opened" in caplog.text
    assert secret not in caplog.text


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
    signed_for: str | None = None  # the agent id signed, when not the one sent ("other")
    version: str = "v2"
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
    "signature scheme v3": Refusal(
        401, "malformed_signature", tamper=lambda h: {**h, SIG: h[SIG].replace("v2=", "v3=")}
    ),
    "signature not hex": Refusal(
        401, "malformed_signature", tamper=lambda h: {**h, SIG: "v2=" + "z" * 64}
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
    "signed for another agent": Refusal(401, "invalid_signature", signed_for="other"),
    "v2 signature sent as v1": Refusal(
        401, "invalid_signature", tamper=lambda h: {**h, SIG: h[SIG].replace("v2=", "v1=")}
    ),
    "v1 signature, body names no agent": Refusal(401, "unbound_signature", version="v1"),
    "v1 signature, body names another agent": Refusal(
        400,
        "agent_mismatch",
        version="v1",
        body=b'{"agent_id": "6f1c2a8e-1111-4222-8333-444455556666"}',
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
    agent_id = {"this": str(agent.id), "unknown": str(uuid.uuid4())}.get(case.agent, case.agent)
    signed_for = str(uuid.uuid4()) if case.signed_for == "other" else agent_id
    signed = sign(
        secret,
        case.signed_body or case.body,
        signed_for,
        int(time.time()) - case.age,
        version=case.version,
    )
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
    headers = sign(OPERATOR_SECRET, body, agent.id)
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
    old = dt.timedelta(minutes=11)
    UsedKillSignature.objects.create(agent=agent, signature="a" * 64, created_at=now - old)
    recent = dt.timedelta(minutes=9)
    UsedKillSignature.objects.create(agent=agent, signature="b" * 64, created_at=now - recent)
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


# --- The README's recipe -----------------------------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE_URL = "https://saferclaw.example.com"


def readme_recipe() -> str:
    """The shell block of the README's kill switch section."""
    section = README.read_text().split("## Kill switch", 1)[1].split("\n## ", 1)[0]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def test_the_readme_shows_the_recipe_the_code_offers():
    assert readme_recipe() == curl_recipe(base_url=EXAMPLE_URL)


@pytest.fixture
def live_app(transactional_db):
    live = start_live_server()
    yield live.url
    close_gateway()  # on the server's loop, while it still runs
    live.stop()
    close_kill_threads()


@pytest.mark.parametrize("signer", ["operator", "owner"])
def test_the_readme_recipe_kills_an_agent_on_a_live_server(live_app, alice, signer):
    """bash, openssl and curl, exactly as the README says, against the app under uvicorn."""
    agent, token = unreachable_agent(alice)
    secret = OPERATOR_SECRET if signer == "operator" else Agent.objects.get(pk=agent.pk).kill_secret
    script = readme_recipe().replace(EXAMPLE_URL, live_app)
    assert script != readme_recipe()

    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env={"PATH": os.environ["PATH"], "AGENT_ID": str(agent.id), "SECRET": secret},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )

    answer = json.loads(done.stdout)
    assert (answer["agent"], answer["status"], answer["token_revoked"]) == (
        str(agent.id),
        "killed",
        True,
    )
    assert Agent.objects.get(pk=agent.pk).status == S.KILLED
    assert KillSwitchCall.objects.get().signed_with == signer
    # The gateway, on the same server, refuses the agent's token.
    refused = httpx.post(
        f"{live_app}/gateway/openai/v1/chat/completions",
        headers={"Authorization": f"Bearer {token}"},
        json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert refused.status_code == 401


# --- The ASGI front (production) answers as the Django view does ---------------------------------


def via_both_fronts(client, live_url: str, method: str, path: str, body: bytes, headers):
    """The same request through Django's test client and through uvicorn's ASGI front."""
    django = client.generic(method, path, body, content_type="application/json", headers=headers)
    asgi = httpx.request(
        method,
        live_url + path,
        content=body,
        headers={"Content-Type": "application/json", **headers},
    )
    return django, asgi


FRONT_CASES = {
    "GET": ("GET", "this", STOP_BODY, "v2", {}),
    "body too large": ("POST", "this", b'{"pad": "%s"}' % (b"x" * 2000), "v2", {}),
    "no headers": ("POST", "this", STOP_BODY, "none", {}),
    "stale": ("POST", "this", STOP_BODY, "v2", {"age": 400}),
    "wrong secret": ("POST", "this", STOP_BODY, "v2", {"secret": WRONG_SECRET}),
    "unknown agent": ("POST", "unknown", STOP_BODY, "v2", {}),
    "not an agent id": ("POST", "not-a-uuid", STOP_BODY, "v2", {}),
    "nested path": ("POST", "this/more", STOP_BODY, "v2", {}),
    "v1 naming no agent": ("POST", "this", STOP_BODY, "v1", {}),
    "body not JSON": ("POST", "this", b"stop it", "v2", {}),
    "lower-case header names": ("POST", "this", b"[1]", "v2", {"lower": True}),
}


@pytest.mark.parametrize("name", FRONT_CASES)
def test_the_asgi_front_refuses_as_the_django_view_does(client, live_app, alice, name):
    agent, token = unreachable_agent(alice)
    method, target, body, version, extra = FRONT_CASES[name]
    agent_id = {"this": str(agent.id), "unknown": str(uuid.uuid4())}.get(target, target)
    if target == "this/more":
        agent_id = f"{agent.id}/more"
    headers = {}
    if version != "none":
        headers = sign(
            extra.get("secret", OPERATOR_SECRET),
            body,
            agent_id,
            int(time.time()) - extra.get("age", 0),
            version=version,
        )
    if extra.get("lower"):
        headers = {name.lower(): value for name, value in headers.items()}

    django, asgi = via_both_fronts(
        client, live_app, method, f"/webhooks/agent-kill/{agent_id}", body, headers
    )

    assert asgi.status_code == django.status_code >= 400
    assert asgi.json() == django.json()
    assert asgi.headers.get("Allow") == django.get("Allow")
    assert token_works(client, token)
    calls = KillSwitchCall.objects.all()
    if target == "this/more":
        assert not calls.exists()  # no such URL: nothing to audit
    else:
        assert [(c.status_code, c.accepted, c.source_ip) for c in calls] == [
            (django.status_code, False, "127.0.0.1")
        ] * 2


def test_the_asgi_front_kills_as_the_django_view_does(client, live_app, alice):
    answers = []
    for front in ("django", "asgi"):
        agent, token = unreachable_agent(alice, front)
        body = json.dumps({"action": "remove", "agent_id": str(agent.id)}).encode()
        headers = sign(OPERATOR_SECRET, body, agent.id, version="v1")
        path = f"/webhooks/agent-kill/{agent.id}"
        if front == "django":
            response = client.post(path, body, content_type="application/json", headers=headers)
            answers.append((response.status_code, response.json(), response.get("Deprecation")))
        else:
            response = httpx.post(live_app + path, content=body, headers=headers)
            answers.append(
                (response.status_code, response.json(), response.headers.get("Deprecation"))
            )
        assert not token_works(client, token)
        assert Agent.objects.get(pk=agent.pk).status == S.KILLED
        answers[-1][1]["agent"] = "<id>"
    assert answers[0] == answers[1]
    assert answers[0][0] == 202
    assert answers[0][2] == "true"
    assert KillSwitchCall.objects.filter(accepted=True, source_ip="127.0.0.1").count() == 2


def test_the_asgi_front_checks_the_host_as_django_does(client, live_app, alice):
    agent, token = unreachable_agent(alice)
    response = httpx.post(
        f"{live_app}/webhooks/agent-kill/{agent.id}",
        content=STOP_BODY,
        headers={**sign(OPERATOR_SECRET, STOP_BODY, agent.id), "Host": "evil.example"},
    )
    assert response.status_code == 400
    assert token_works(client, token)
    assert not KillSwitchCall.objects.exists()


# --- The revocation waits for nothing else -------------------------------------------------------


@pytest.fixture
def other_connection(settings):
    """A second database session, as another process (a worker, the gateway) would hold."""
    import psycopg

    db = settings.DATABASES["default"]
    with psycopg.connect(
        dbname=connection.settings_dict["NAME"],
        user=db.get("USER") or None,
        password=db.get("PASSWORD") or None,
        host=db.get("HOST") or None,
        port=db.get("PORT") or None,
    ) as session:
        yield session


@pytest.mark.parametrize(
    "holder",
    [
        "SELECT 1 FROM agents_agent WHERE id = %s FOR UPDATE",  # a state change, a billing handler
        "UPDATE agents_agent SET reserved_tokens = reserved_tokens + 1 WHERE id = %s",  # a call
    ],
    ids=["row locked for update", "row being updated"],
)
def test_the_token_is_refused_while_the_agents_row_is_held(
    client, live_app, alice, other_connection, holder
):
    """The refusal does not wait for the agent's row, the state change or anything after it."""
    agent, token = unreachable_agent(alice)
    other_connection.execute(holder, [agent.id])  # its transaction stays open
    answer: list[httpx.Response] = []
    kill_call = threading.Thread(
        target=lambda: answer.append(
            httpx.post(
                f"{live_app}/webhooks/agent-kill/{agent.id}",
                content=STOP_BODY,
                headers=sign(OPERATOR_SECRET, STOP_BODY, agent.id),
                timeout=60,
            )
        )
    )
    kill_call.start()
    try:
        deadline = time.monotonic() + 20
        while token_agent(token) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        refused_while_held = token_agent(token) is None
        # The rest of the kill waits for the row: still in progress, state unchanged.
        in_progress = kill_call.is_alive()
        status_meanwhile = Agent.objects.get(pk=agent.pk).status
    finally:
        other_connection.rollback()
        kill_call.join(timeout=60)

    assert refused_while_held
    assert in_progress
    assert status_meanwhile == S.RUNNING
    assert answer[0].status_code == 202
    assert Agent.objects.get(pk=agent.pk).status == S.KILLED


def test_the_kill_agent_command_refuses_the_token_while_the_agents_row_is_held(
    transactional_db, alice, other_connection
):
    agent, token = unreachable_agent(alice)
    other_connection.execute("SELECT 1 FROM agents_agent WHERE id = %s FOR UPDATE", [agent.id])
    out = io.StringIO()

    def run_command() -> None:
        try:
            call_command("kill_agent", str(agent.id), stdout=out)
        finally:
            connection.close()

    command = threading.Thread(target=run_command)
    command.start()
    try:
        deadline = time.monotonic() + 20
        while token_agent(token) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        refused_while_held = token_agent(token) is None
        in_progress = command.is_alive()
    finally:
        other_connection.rollback()
        command.join(timeout=60)

    assert refused_while_held
    assert in_progress
    assert out.getvalue().startswith(f"killed {agent.id}: token revoked")
    assert Agent.objects.get(pk=agent.pk).status == S.KILLED
