"""The agent API's heartbeat, from a test client and from a real container."""

from __future__ import annotations

import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection

from agents.models import Agent
from agents.services import create_agent, deploy_agent
from agents.tests.factories import paid
from agents.tokens import issue_agent_token, revoke_agent_tokens
from droplets.tests.fixtures import TEST_CONTROL_PLANE_PORT


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


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def control_plane_on_host(transactional_db):
    """The control plane on the port the droplet firewall opens to agents."""

    class Server(WSGIServer):
        allow_reuse_address = True

    server = make_server(
        "0.0.0.0",
        TEST_CONTROL_PLANE_PORT,
        WSGIHandler(),
        server_class=Server,
        handler_class=QuietHandler,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield
    server.shutdown()
    server.server_close()
    connection.close()


@pytest.mark.docker
def test_a_running_container_heartbeats_through_the_firewall(
    control_plane_on_host, alice, local_droplet, agent_firewall, settings
):
    from droplets.models import Droplet

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "172.31.1.1"]
    Droplet.objects.filter(pk=local_droplet.pk).update(
        control_plane_url=f"http://172.31.1.1:{TEST_CONTROL_PLANE_PORT}"
    )
    agent = deploy_agent(agent=paid(create_agent(owner=alice, name="beat", provider_key="sk-x")))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if Agent.objects.get(pk=agent.pk).last_activity_at:
            break
        time.sleep(0.5)
    assert Agent.objects.get(pk=agent.pk).last_activity_at is not None
