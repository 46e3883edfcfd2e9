"""What the runtime benchmarks share: Django on a throwaway database, the control
plane under uvicorn where the test droplet's firewall lets containers reach it,
and agents deployed from the real runtime image on the local test droplet.

Run them under the Docker lock (they use droplet 1 and port 18000):

    flock /tmp/saferclaw-docker.lock ./dev bench runtime_idle
    flock /tmp/saferclaw-docker.lock ./dev bench runtime_latency

``BENCH_DATABASE_URL`` (a PostgreSQL database of its own, which the benchmark
migrates and empties) puts the control plane on PostgreSQL, as in production, where a waiting
inbox poll is woken by LISTEN/NOTIFY; without it a throwaway SQLite file is used.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.deploy_latency import machine, percentile  # noqa: E402

__all__ = ["ROOT", "django_database", "machine", "percentile", "stack"]


@contextmanager
def django_database() -> Iterator[str]:
    """Django set up on the benchmark's database; yields a description of it."""
    with tempfile.TemporaryDirectory() as folder:
        url = os.environ.get("BENCH_DATABASE_URL") or f"sqlite:///{Path(folder) / 'bench.sqlite3'}"
        os.environ.update(
            DJANGO_SETTINGS_MODULE="safer_claw.settings_test", DATABASE_URL=url, LOG_LEVEL="WARNING"
        )
        os.environ.pop("REDIS_URL", None)
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        if url.startswith("postgres"):
            call_command("flush", interactive=False, verbosity=0)  # what an earlier run left
        yield "PostgreSQL" if url.startswith("postgres") else "SQLite"


@contextmanager
def stack(*, capacity: int) -> Iterator[dict]:
    """The control plane serving droplet 1's agents; removes this run's containers after."""
    import docker
    from django.conf import settings

    from agents.tests.live_agents import CONTROL_PLANE_URL, GATEWAY_ADDRESS, ControlPlane
    from droplets.tests.fixtures import (
        D1_SUBNET,
        TEST_CONTROL_PLANE_PORT,
        _read_env_file,
        create_local_droplet,
    )
    from safer_claw.accounts.models import User

    env = _read_env_file()
    subprocess.run(
        [
            str(ROOT / "droplets" / "bootstrap" / "firewall.sh"),
            "--subnet",
            D1_SUBNET,
            "--control-plane",
            f"127.0.0.1:{TEST_CONTROL_PLANE_PORT}",
            "--control-plane-on-host",
        ],
        check=True,
        capture_output=True,
    )
    settings.RUNTIME_IMAGE = env["SAFERCLAW_RUNTIME_IMAGE"]
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, GATEWAY_ADDRESS]
    owner = User.objects.create_user(f"bench-{os.getpid()}@example.com", "x")
    droplet = create_local_droplet(env, capacity=capacity, control_plane_url=CONTROL_PLANE_URL)
    engine = docker.DockerClient(base_url=env["SAFERCLAW_D1_DOCKER_URL"])
    server = ControlPlane()
    server.start()
    try:
        yield {"env": env, "owner": owner, "droplet": droplet, "engine": engine}
    finally:
        mine = {"label": f"saferclaw.owner={owner.id}"}
        for container in engine.containers.list(all=True, filters=mine):
            container.remove(force=True)
        server.stop()
        engine.close()


def deploy(owner, name: str, **fields):
    """A paid agent deployed from the runtime image (no token cap worth noting)."""
    from agents.models import Agent
    from agents.services import create_agent, deploy_agent

    agent = create_agent(owner=owner, name=name, provider_key="sk-bench-owner-key-0123456789")
    Agent.objects.filter(pk=agent.pk).update(billing_active=True, **fields)
    agent = deploy_agent(agent=Agent.objects.get(pk=agent.pk))
    assert agent.status == "running", agent.status_reason
    return agent
