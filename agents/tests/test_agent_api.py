"""The agent API's heartbeat, from a test client and from a real container."""

from __future__ import annotations

import pytest

from agents.models import Agent
from agents.tokens import issue_agent_token, revoke_agent_tokens


@pytest.mark.django_db
def test_heartbeat_with_a_valid_token_records_activity(client, agent):
    token = issue_agent_token(agent=agent)
    response = client.post("/agent-api/v1/heartbeat", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 204
    assert Agent.objects.get(pk=agent.pk).last_activity_at is not None


@pytest.mark.django_db
@pytest.mark.parametrize("header", ["", "Bearer sca_unknown", "Bearer ", "Basic abc", "sca_x"])
def test_heartbeat_without_a_valid_token_is_401(client, agent, header):
    issue_agent_token(agent=agent)
    response = client.post("/agent-api/v1/heartbeat", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"
    assert Agent.objects.get(pk=agent.pk).last_activity_at is None


@pytest.mark.django_db
def test_revoked_token_is_refused_on_the_next_call(client, agent):
    token = issue_agent_token(agent=agent)
    revoke_agent_tokens(agent=agent)
    response = client.post("/agent-api/v1/heartbeat", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


@pytest.mark.django_db
def test_reissuing_revokes_the_previous_token(client, agent):
    old = issue_agent_token(agent=agent)
    new = issue_agent_token(agent=agent)
    assert (
        client.post(
            "/agent-api/v1/heartbeat", headers={"Authorization": f"Bearer {old}"}
        ).status_code
        == 401
    )
    assert (
        client.post(
            "/agent-api/v1/heartbeat", headers={"Authorization": f"Bearer {new}"}
        ).status_code
        == 204
    )


@pytest.mark.django_db
def test_heartbeat_is_post_only(client, agent):
    token = issue_agent_token(agent=agent)
    response = client.get("/agent-api/v1/heartbeat", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 405


@pytest.mark.docker
def test_a_running_container_polls_the_inbox_through_the_firewall(control_plane, alice):
    """Its polls are its liveness: the status API reads them (the image has no HEALTHCHECK)."""
    from agents.tests.live_agents import deploy_live_agent, wait_for

    owner = deploy_live_agent(alice)
    wait_for(
        lambda: Agent.objects.get(pk=owner.agent.pk).last_activity_at,
        timeout=30,
        what="a poll from the container",
    )
    status = owner.client.get(f"/api/agents/{owner.agent.id}/status").json()
    assert status["runtime_alive"] is True
    assert status["container"]["health"] is None
