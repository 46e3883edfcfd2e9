"""Deploy and stop latency of agent containers on the test droplets.

    ./dev bench deploy        (or: make bench-deploy)

Measures, on the two local engines of scripts/droplets/up:
- deploy: agent row -> container running (deploy_agent: placement, token,
  hardened create + start, state change), p50/p95 over N agents;
- stop: stop_agent (state change + SIGTERM, exit) p50/p95;
- baseline: the same hardened container created and started, then stopped,
  with the Docker SDK directly, in the same run, so the ratio shows what the
  control plane adds over the engine itself.

It uses a throwaway SQLite database and removes every container it made.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def setup_django(database: Path) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="safer_claw.settings_test",
        DATABASE_URL=f"sqlite:///{database}",
        LOG_LEVEL="WARNING",
    )
    os.environ.pop("REDIS_URL", None)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    engine = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory_kb / 1024**2:.0f} GiB, "
        f"Linux {platform.release()}, Docker engine {engine}, Python {platform.python_version()}"
    )


def main(count: int = 20) -> None:
    with tempfile.TemporaryDirectory() as folder:
        setup_django(Path(folder) / "bench.sqlite3")
        from droplets.tests.fixtures import _read_env_file

        run_benchmark(_read_env_file(), count)


def run_benchmark(env: dict[str, str], count: int) -> None:
    from django.conf import settings

    from droplets.models import Droplet
    from droplets.tests.fixtures import create_local_droplet, create_tls_droplet
    from safer_claw.accounts.models import User

    settings.RUNTIME_IMAGE = env["SAFERCLAW_RUNTIME_IMAGE"]
    owner = User.objects.create_user("bench@example.com", "x")
    local = create_local_droplet(env, capacity=count, control_plane_url="")
    tls = create_tls_droplet(env, capacity=count, control_plane_url="")
    print(f"machine: {machine()}")
    print(f"agents per droplet: {count}\n")
    print(f"{'':34}{'p50 ms':>10}{'p95 ms':>10}{'baseline p50':>14}{'ratio':>8}")
    for droplet, other, label in ((local, tls, "unix socket"), (tls, local, "mutual TLS")):
        Droplet.objects.filter(pk=other.pk).update(status="maintenance")
        Droplet.objects.filter(pk=droplet.pk).update(status="active")
        ours = measure_ours(owner, droplet, count)
        base = measure_baseline(droplet, count)
        for step in ("deploy", "stop"):
            p50, p95 = percentile(ours[step], 0.5), percentile(ours[step], 0.95)
            b50 = percentile(base[step], 0.5)
            name = f"{step} ({label})"
            print(
                f"{name:34}{p50 * 1000:>10.1f}{p95 * 1000:>10.1f}{b50 * 1000:>14.1f}"
                f"{p50 / b50:>8.2f}"
            )
    print(
        "\ndeploy: agent row -> container running (placement, token, create, start, state);"
        "\nstop: state change + SIGTERM until exited;"
        "\nbaseline: the same hardened create+start / stop through the Docker SDK alone."
    )


def measure_ours(owner, droplet, count: int) -> dict[str, list[float]]:
    from agents.services import create_agent, deploy_agent, stop_agent
    from agents.tests.factories import paid
    from droplets.containers import container_state

    timings: dict[str, list[float]] = {"deploy": [], "stop": []}
    agents = []
    for i in range(count):
        agent = paid(create_agent(owner=owner, name=f"{droplet.name}-{i}", provider_key="sk-bench"))
        started = time.perf_counter()
        agent = deploy_agent(agent=agent)
        timings["deploy"].append(time.perf_counter() - started)
        assert agent.droplet_id == droplet.pk
        assert container_state(droplet, agent.container_id).running
        agents.append(agent)
    for agent in agents:
        started = time.perf_counter()
        stop_agent(agent=agent)
        timings["stop"].append(time.perf_counter() - started)
    return timings


def measure_baseline(droplet, count: int) -> dict[str, list[float]]:
    from django.conf import settings

    from droplets.containers import (
        ContainerSpec,
        _host_config_kwargs,
        ensure_agent_network,
    )
    from droplets.docker_client import connect

    timings: dict[str, list[float]] = {"deploy": [], "stop": []}
    with connect(droplet) as engine:
        network = ensure_agent_network(engine, droplet)
        for _ in range(count):
            spec = ContainerSpec(
                name=f"saferclaw-bench-{uuid.uuid4().hex[:8]}",
                image=settings.RUNTIME_IMAGE,
                environment={"AGENT_TOKEN": "x", "CONTROL_PLANE_URL": "http://127.0.0.1:9"},
                labels={"saferclaw.agent": "bench"},
                cpus=0.5,
                memory_bytes=512 * 1024**2,
                pids_limit=100,
            )
            started = time.perf_counter()
            container = engine.containers.create(
                image=spec.image,
                name=spec.name,
                environment=spec.environment,
                labels=spec.labels,
                network=network,
                **_host_config_kwargs(spec),
            )
            container.start()
            timings["deploy"].append(time.perf_counter() - started)
            started = time.perf_counter()
            container.stop(timeout=settings.CONTAINER_STOP_TIMEOUT_SECONDS)
            timings["stop"].append(time.perf_counter() - started)
        for container in engine.containers.list(all=True, filters={"label": "saferclaw.agent"}):
            container.remove(force=True)
    return timings


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
