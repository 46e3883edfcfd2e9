"""The fault suite's own Docker engine, shared by its tests (one per run)."""

from __future__ import annotations

import uuid

import docker
import pytest

from droplets.models import Droplet
from safer_claw.celery import app
from safer_claw.tests.faults.harness import OwnEngine, RedisServer

# Its agents' network: clear of the test droplets' 172.31.1-2.0/24.
FAULTS_SUBNET = "172.31.77.0/24"


@pytest.fixture(scope="session")
def own_engine(droplet_env):
    engine = OwnEngine()
    try:
        engine.start()
        engine.load_image(
            droplet_env["SAFERCLAW_D1_DOCKER_URL"], droplet_env["SAFERCLAW_BUSYBOX_IMAGE"]
        )
        yield engine
    finally:
        engine.destroy()


@pytest.fixture
def own_docker(own_engine):
    """A client of the fault suite's engine; its agent containers removed after."""
    client = docker.DockerClient(base_url=own_engine.url)
    yield client
    if own_engine.process is None:  # a test that stopped it failed before starting it
        own_engine.start()
    for container in client.containers.list(all=True, filters={"label": "saferclaw.agent"}):
        container.remove(force=True)
    client.close()


@pytest.fixture
def own_droplet(db, own_engine, own_docker, settings) -> Droplet:
    """The fault suite's engine as a droplet; its containers run the sleeper image."""
    settings.RUNTIME_IMAGE = own_engine.IMAGE
    return Droplet.objects.create(
        name="faults-engine",
        ip_address="127.0.0.1",
        max_capacity=4,
        vcpus=2,
        docker_url=own_engine.url,
        agent_subnet=FAULTS_SUBNET,
        control_plane_url="http://172.31.77.1:8000",
    )


def ours(client: docker.DockerClient, agent) -> list[str]:
    """Ids of the containers labelled for ``agent`` on the engine, running or not."""
    found = client.containers.list(all=True, filters={"label": f"saferclaw.agent={agent.pk}"})
    return [container.id for container in found]


def _forget_broker_connections() -> None:
    # Celery keeps a connection pool and a producer pool made for the broker it
    # first used; a test that changes the broker must drop both.
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def own_broker(tmp_path):
    """A Redis server of the test's own as Celery's broker; tasks really queued
    (not eager) on a queue of the test's own. Yields (server, queue)."""
    server = RedisServer(tmp_path)
    server.start()
    saved = {k: app.conf[k] for k in ("broker_url", "task_always_eager", "task_default_queue")}
    queue = f"faults-{uuid.uuid4().hex[:8]}"
    app.conf.update(broker_url=server.url, task_always_eager=False, task_default_queue=queue)
    _forget_broker_connections()
    try:
        yield server, queue
    finally:
        app.conf.update(saved)
        _forget_broker_connections()
        server.kill()
