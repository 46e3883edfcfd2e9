"""Fixtures for tests against the two real Docker engines of scripts/droplets/up.

Droplet 1 is the engine on the local unix socket; droplet 2 listens on
tcp://127.0.0.3:2376 and accepts only clients with a certificate from its CA.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import docker
import pytest

from droplets.models import Droplet

ROOT = Path(__file__).resolve().parents[2]
STATE_DIR = Path(os.environ.get("SAFERCLAW_DROPLETS_DIR", "/var/lib/saferclaw-test-droplets"))
D1_ID = uuid.UUID("00000000-0000-4000-8000-00000000d001")
D2_ID = uuid.UUID("00000000-0000-4000-8000-00000000d002")
D1_SUBNET, D2_SUBNET = "172.31.1.0/24", "172.31.2.0/24"


def _read_env_file() -> dict[str, str]:
    path = STATE_DIR / "env"
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: the Docker test droplets are not up. Run "
            "scripts/droplets/up (as root; ./dev test and .ci/run do it).",
            pytrace=False,
        )
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


@pytest.fixture(scope="session")
def droplet_env() -> dict[str, str]:
    return _read_env_file()


@pytest.fixture(scope="session")
def engines(droplet_env):
    """Raw docker clients for both engines (d2 through its local unix socket)."""
    d1 = docker.DockerClient(base_url=droplet_env["SAFERCLAW_D1_DOCKER_URL"])
    d2 = docker.DockerClient(base_url=droplet_env["SAFERCLAW_D2_UNIX"])
    yield {"d1": d1, "d2": d2}
    d1.close()
    d2.close()


def _remove_ours(engine: docker.DockerClient) -> None:
    for container in engine.containers.list(all=True, filters={"label": "saferclaw.agent"}):
        container.remove(force=True)


@pytest.fixture
def clean_engines(engines):
    """No container of ours on either engine before or after the test."""
    for engine in engines.values():
        _remove_ours(engine)
    yield engines
    for engine in engines.values():
        _remove_ours(engine)


def create_local_droplet(
    env: dict[str, str], *, capacity: int = 5, control_plane_url: str = "http://172.31.1.1:8000"
) -> Droplet:
    """Droplet 1 (the engine on the local unix socket) as a row; tests and benchmarks."""
    return Droplet.objects.create(
        id=D1_ID,
        name="d1-local",
        ip_address="127.0.0.1",
        max_capacity=capacity,
        vcpus=2,
        docker_url=env["SAFERCLAW_D1_DOCKER_URL"],
        agent_subnet=D1_SUBNET,
        control_plane_url=control_plane_url,
    )


def create_tls_droplet(
    env: dict[str, str], *, capacity: int = 5, control_plane_url: str = "http://172.31.2.1:8000"
) -> Droplet:
    """Droplet 2 (mutual TLS on tcp://127.0.0.3:2376) as a validated row."""
    droplet = Droplet(
        id=D2_ID,
        name="d2-tls",
        ip_address="127.0.0.3",
        max_capacity=capacity,
        vcpus=2,
        docker_url=env["SAFERCLAW_D2_DOCKER_URL"],
        agent_subnet=D2_SUBNET,
        control_plane_url=control_plane_url,
        tls_ca_cert=Path(env["SAFERCLAW_TLS_CA"]).read_text(),
        tls_client_cert=Path(env["SAFERCLAW_TLS_CERT"]).read_text(),
        tls_client_key=Path(env["SAFERCLAW_TLS_KEY"]).read_text(),
    )
    droplet.full_clean()
    droplet.save()
    return droplet


@pytest.fixture
def local_droplet(db, droplet_env, clean_engines, settings) -> Droplet:
    settings.RUNTIME_IMAGE = droplet_env["SAFERCLAW_RUNTIME_IMAGE"]
    return create_local_droplet(droplet_env)


@pytest.fixture
def tls_droplet(db, droplet_env, clean_engines, settings) -> Droplet:
    settings.RUNTIME_IMAGE = droplet_env["SAFERCLAW_RUNTIME_IMAGE"]
    return create_tls_droplet(droplet_env)


def droplets_script(*args: str) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "droplets" / "droplets"), *args],
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.fixture
def restart_d2_after():
    """For tests that stop the TLS engine: it is started again afterwards."""
    yield
    droplets_script("start-d2")


# The control plane's port as the test firewall opens it to agent containers.
TEST_CONTROL_PLANE_PORT = 18000


@pytest.fixture(scope="session")
def agent_firewall(droplet_env):
    """The bootstrap script's egress rules, applied to both test droplets' subnets."""
    script = ROOT / "droplets" / "bootstrap" / "firewall.sh"
    for subnet in (D1_SUBNET, D2_SUBNET):
        subprocess.run(
            [
                str(script),
                "--subnet",
                subnet,
                "--control-plane",
                f"127.0.0.1:{TEST_CONTROL_PLANE_PORT}",
                "--control-plane-on-host",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
