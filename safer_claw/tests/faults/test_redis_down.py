"""Fault: Redis (cache, rate limits and Celery's broker) goes away.

A Redis server of the test's own is the cache and the broker; it is killed.
Sign-in (with its throttle still counting), the API, the dashboard, the tool
gateway (a model call answered and charged), the kill switch (a container
stopped) and the Stripe webhook keep answering; a payment made meanwhile is kept in the outbox
and, once Redis is back, a real Celery worker deploys the agent on a real
engine, once.
"""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
import redis
from django.core.cache import caches
from django.test import Client
from django.urls import reverse

from agents.models import Agent, AgentEvent, AgentStatus
from agents.services import create_agent, deploy_agent
from agents.tests.factories import paid
from agents.tests.test_kill_switch import OPERATOR_SECRET, sign
from billing.tests.factories import PlanFactory
from billing.tests.fake_stripe import fake_stripe_fixture, stripe_api_fixture  # noqa: F401
from billing.tests.helpers import checkout, post_event
from gateway.models import UsageStatus
from gateway.tests.fake_providers import fake_provider_server, fake_providers  # noqa: F401
from gateway.tests.fixtures import gateway, make_agent, prices  # noqa: F401
from gateway.tests.helpers import MESSAGES, only_record
from safer_claw.accounts.services import mint_api_token
from safer_claw.accounts.tests.factories import PASSWORD
from safer_claw.accounts.tests.test_login_throttle import attempt
from safer_claw.models import OutboxTask
from safer_claw.outbox import flush_outbox
from safer_claw.tests.faults.conftest import ours
from safer_claw.tests.faults.harness import (
    celery_worker,
    run_database_url,
    service_env,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.docker, pytest.mark.worker]
NOW = dt.timedelta(0)  # flush every outbox row, however young


@pytest.fixture
def own_redis(own_broker, settings):
    """The test's Redis as this process's cache, as well as its broker."""
    server, queue = own_broker
    settings.CACHES = {
        "default": {"BACKEND": "safer_claw.cache.FailoverCache", "LOCATION": server.url}
    }
    return server, queue


def test_redis_down_sign_in_api_gateway_kill_switch_and_a_payment_still_work(
    own_redis,
    transactional_db,
    alice,
    stripe_api,
    own_droplet,
    own_engine,
    own_docker,
    tmp_path,
    gateway,  # noqa: F811
    make_agent,  # noqa: F811
    settings,
):
    server, queue = own_redis
    settings.KILL_SWITCH_SECRET = [OPERATOR_SECRET]
    doomed = deploy_agent(
        agent=paid(create_agent(owner=alice, name="doomed", provider_key="sk-test"))
    )
    bot = make_agent()
    plan = PlanFactory(name="Basic", stripe_price_id="price_starter")
    _, api_token = mint_api_token(user=alice)
    caches["default"].set("probe", 1)
    assert redis.Redis.from_url(server.url).dbsize() == 1  # the cache is Redis

    server.kill()

    # Sign-in: wrong passwords are still throttled (in this process's memory),
    # the owner still signs in from another address.
    attacker = Client(REMOTE_ADDR="203.0.113.66")
    assert [attempt(attacker, alice.email, f"guess-{n}") for n in range(7)] == (
        ["wrong"] * 5 + ["throttled"] * 2
    )
    owner = Client(REMOTE_ADDR="198.51.100.7")
    assert attempt(owner, alice.email, PASSWORD) == "in"
    assert owner.get(reverse("dashboard:home")).status_code == 200
    api = Client(HTTP_AUTHORIZATION=f"Token {api_token}")
    assert api.get("/api/agents/").status_code == 200

    # An agent's model call through the gateway is answered, and charged.
    reply = httpx.post(
        f"{gateway}/gateway/openai/v1/chat/completions",
        headers={"authorization": f"Bearer {bot.token}"},
        json={"model": "gpt-test", "messages": MESSAGES},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    assert only_record(bot.agent).status == UsageStatus.OK

    # The kill switch stops an agent's container.
    killed = Client().post(
        f"/webhooks/agent-kill/{doomed.pk}",
        data=b"",
        content_type="application/json",
        headers=sign(OPERATOR_SECRET, b"", doomed.pk),
    )
    assert killed.status_code == 200, killed.content
    doomed.refresh_from_db()
    assert doomed.status == AgentStatus.KILLED
    assert own_docker.containers.get(doomed.container_id).status == "exited"

    # A payment arrives: answered 200, and the deploy waits in the outbox.
    subscription = checkout(alice, plan)
    response = post_event(
        Client(), stripe_api.complete_checkout(subscription.stripe_checkout_session_id)
    )
    assert response.status_code == 200
    agent = Agent.objects.get(pk=subscription.agent_id)
    assert agent.status == AgentStatus.PROVISIONING
    assert list(OutboxTask.objects.values_list("task", "args")) == [
        ("billing.tasks.deploy_paid_agent", [str(agent.pk)])
    ]

    # Redis comes back (same port, empty), with a worker; beat's flush sends the task.
    server.start()
    worker = celery_worker(
        service_env(
            database_url=run_database_url(),
            redis_url=server.url,
            RUNTIME_IMAGE=own_engine.IMAGE,
        ),
        tmp_path / "worker.log",
        queue=queue,
    ).start()
    try:
        assert flush_outbox(older_than=NOW) == 1
        wait_until(
            lambda: Agent.objects.get(pk=agent.pk).status == AgentStatus.RUNNING,
            what=f"the agent to run; worker said:\n{worker.output()}",
            seconds=120,
        )
        # Flushing again (a second beat) sends nothing: the row went with the send.
        assert flush_outbox(older_than=NOW) == 0
    finally:
        worker.stop()

    agent.refresh_from_db()
    assert ours(own_docker, agent) == [agent.container_id]
    assert AgentEvent.objects.filter(agent=agent, to_status=AgentStatus.RUNNING).count() == 1
    assert not OutboxTask.objects.exists()

    # The cache is on Redis again, once its next try comes round (it waits
    # RETRY_SECONDS after the last failure, however soon the agent ran).
    def probe_reaches_redis():
        caches["default"].set("probe-after", 1)
        return redis.Redis.from_url(server.url).exists(":1:probe-after")

    wait_until(probe_reaches_redis, what="the cache to use Redis again", seconds=30)
