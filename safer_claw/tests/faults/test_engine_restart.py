"""Fault: a droplet's Docker engine restarts under running agents.

The suite's own dockerd (its containers run a sleeper image) is stopped with
SIGTERM, as a service restart does, and started again on the same data root.
While it is away the owner's status call says the droplet does not answer;
afterwards reconciliation leaves every agent running in exactly one container
of its own, and the droplet's count exact.
"""

from __future__ import annotations

import pytest
from django.test import Client

from agents.models import Agent, AgentStatus
from agents.reconciliation import reconcile_droplet
from agents.services import create_agent, deploy_agent
from agents.tests.factories import paid
from safer_claw.accounts.services import mint_api_token
from safer_claw.tests.faults.conftest import ours

pytestmark = [pytest.mark.faults, pytest.mark.docker]


def test_agents_run_again_after_their_engine_restarts(alice, own_droplet, own_engine, own_docker):
    agents = [
        deploy_agent(agent=paid(create_agent(owner=alice, name=f"a{n}", provider_key="sk-test")))
        for n in range(2)
    ]
    assert [a.status for a in agents] == [AgentStatus.RUNNING] * 2
    _, token = mint_api_token(user=alice)
    api = Client(HTTP_AUTHORIZATION=f"Token {token}")

    own_engine.stop()
    during = api.get(f"/api/agents/{agents[0].pk}/status")
    # The owner's status still answers, and says the droplet did not.
    assert during.status_code == 200
    assert during.json()["container_error"]

    own_engine.start()
    reconcile_droplet(own_droplet)

    for agent in agents:
        agent.refresh_from_db()
        assert agent.status == AgentStatus.RUNNING, agent.status_reason
        containers = ours(own_docker, agent)
        assert containers == [agent.container_id]
        assert own_docker.containers.get(agent.container_id).status == "running"
    own_droplet.refresh_from_db()
    assert own_droplet.active_container_count == 2
    assert Agent.objects.filter(droplet=own_droplet, status=AgentStatus.RUNNING).count() == 2
    after = api.get(f"/api/agents/{agents[0].pk}/status").json()
    assert after["container"]["running"] is True
