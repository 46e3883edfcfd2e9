"""Fault: a droplet's Docker engine restarts under running agents.

The suite's own dockerd (its containers run a sleeper image) is stopped with
SIGTERM, as a service restart does, and started again on the same data root.
While it is away the owner's status call says the droplet does not answer;
afterwards reconciliation leaves every agent running in exactly one container
of its own, and the droplet's count exact.

When containers do not come back (one's restart policy did not apply, another
was lost with the engine's data), reconciliation deploys those paid agents
again, and each owner's page says why.
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from agents.models import Agent, AgentEvent, AgentStatus
from agents.reconciliation import reconcile_droplet
from agents.services import create_agent, deploy_agent
from agents.tests.factories import paid
from safer_claw.accounts.services import mint_api_token
from safer_claw.tests.faults.conftest import ours

pytestmark = [pytest.mark.faults, pytest.mark.docker]
S = AgentStatus


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


def test_agents_whose_containers_do_not_come_back_are_deployed_again(
    transactional_db, alice, own_droplet, own_engine, own_docker
):
    unlucky, lost = [
        deploy_agent(agent=paid(create_agent(owner=alice, name=n, provider_key="sk-test")))
        for n in ("unlucky", "lost")
    ]
    old = {unlucky.pk: unlucky.container_id, lost.pk: lost.container_id}
    # Its restart policy will not bring it back after the engine restarts.
    assert own_engine.docker("update", "--restart=no", unlucky.container_id).returncode == 0

    own_engine.stop()
    own_engine.start()
    assert own_docker.containers.get(unlucky.container_id).status == "exited"
    own_docker.containers.get(lost.container_id).remove(force=True)  # its data lost

    # Beat's reconciliation; the deploys it puts in the outbox run inline here
    # (eager mode) once its transaction commits.
    repairs = reconcile_droplet(own_droplet)

    assert sorted(repairs.redeployed) == sorted([str(unlucky.pk), str(lost.pk)])
    assert repairs.failed == []
    for agent in (unlucky, lost):
        agent.refresh_from_db()
        assert agent.status == S.RUNNING, agent.status_reason
        assert ours(own_docker, agent) == [agent.container_id] != [old[agent.pk]]
        assert own_docker.containers.get(agent.container_id).status == "running"
        moves = AgentEvent.objects.filter(agent=agent).exclude(to_status="")
        assert [e.to_status for e in moves][1:] == [
            *(S.PROVISIONING, S.RUNNING),  # its first deploy
            *(S.FAILED, S.PROVISIONING, S.RUNNING),  # lost, told, deployed again
        ]
    own_droplet.refresh_from_db()
    assert own_droplet.active_container_count == 2

    # The owner sees why on each agent's page.
    owner = Client()
    owner.force_login(alice)
    unlucky_page = owner.get(reverse("dashboard:agent", kwargs={"agent_id": unlucky.pk}))
    assert "redeploying: its container was stopped outside Safer-Claw" in unlucky_page.text
    lost_page = owner.get(reverse("dashboard:agent", kwargs={"agent_id": lost.pk}))
    assert "redeploying: its container disappeared from the droplet" in lost_page.text
