"""Hardened containers on a droplet: the interface the rest of the product uses.

This module takes a :class:`ContainerSpec` and returns container ids and
states; it knows nothing of agents. Every container gets the same hardening
(DESIGN.md trust boundary 4), whatever the caller asks for: no privileges, no
capabilities, no new privileges, no swap, a pids cap, a read-only root, a small
noexec ``/tmp``, bounded logs and restarts, no ports, no host mounts, and a
network on which containers cannot reach each other.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.conf import settings
from docker.types import IPAMConfig, IPAMPool, LogConfig, Ulimit

from droplets.docker_client import DropletError, operation
from droplets.models import Droplet

AGENT_NETWORK = "saferclaw-agents"


@dataclass(frozen=True)
class ContainerSpec:
    """What to run and within which limits; hardening is not optional."""

    name: str
    image: str
    environment: dict[str, str]
    labels: dict[str, str]
    cpus: float
    memory_bytes: int
    pids_limit: int
    read_only_root: bool = True
    drop_all_capabilities: bool = True
    user: tuple[int, int] = (10001, 10001)
    command: list[str] | None = None  # the whole argv; None: the image's entrypoint
    # Names the container must reach without DNS (its firewall drops DNS).
    extra_hosts: dict[str, str] = field(default_factory=dict)
    healthcheck: dict | None = None  # None: the image's HEALTHCHECK


@dataclass(frozen=True)
class ContainerState:
    id: str
    status: str  # created, running, restarting, exited, dead…
    running: bool
    exit_code: int | None
    oom_killed: bool
    restart_count: int
    health: str | None  # starting, healthy, unhealthy, or None without a health check
    started_at: str | None
    error: str


@dataclass(frozen=True)
class ContainerStats:
    cpu_percent: float
    memory_bytes: int
    memory_limit_bytes: int


@dataclass(frozen=True)
class ContainerSummary:
    id: str
    name: str
    status: str
    labels: dict[str, str] = field(default_factory=dict)


def bridge_name_for(droplet: Droplet) -> str:
    # Linux interface names are at most 15 characters; one bridge per droplet
    # keeps two engines on one host (as in tests) from sharing a bridge.
    return f"sc-{hashlib.sha256(droplet.id.bytes).hexdigest()[:12]}"


def ensure_agent_network(client, droplet: Droplet) -> str:
    """Create the agents' network on the droplet if it is not there yet."""
    name = AGENT_NETWORK
    if client.networks.list(names=[name]):
        return name
    ipam = None
    if droplet.agent_subnet:
        subnet = ipaddress.ip_network(droplet.agent_subnet)
        gateway = str(next(subnet.hosts()))
        ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=str(subnet), gateway=gateway)])
    client.networks.create(
        name,
        driver="bridge",
        ipam=ipam,
        options={
            # Inter-container traffic off: agents cannot reach each other.
            "com.docker.network.bridge.enable_icc": "false",
            "com.docker.network.bridge.name": bridge_name_for(droplet),
        },
        labels={"saferclaw.network": "agents"},
    )
    return name


def _host_config_kwargs(spec: ContainerSpec) -> dict:
    uid, gid = spec.user
    return {
        "user": f"{uid}:{gid}",
        "read_only": spec.read_only_root,
        "cap_drop": ["ALL"] if spec.drop_all_capabilities else None,
        # Docker's default seccomp profile stays on: nothing here turns it off.
        "security_opt": ["no-new-privileges"],
        "privileged": False,
        "nano_cpus": int(spec.cpus * 1e9),
        "mem_limit": spec.memory_bytes,
        "memswap_limit": spec.memory_bytes,  # equal to memory: no swap
        "pids_limit": spec.pids_limit,
        # uid/gid: the image's own /tmp would keep root's mode (moby #39466).
        "tmpfs": {
            "/tmp": f"rw,noexec,nosuid,nodev,size={settings.AGENT_TMPFS_SIZE},"  # noqa: S108
            f"uid={uid},gid={gid},mode=0700"
        },
        "ulimits": [
            Ulimit(name="nofile", soft=settings.AGENT_NOFILE, hard=settings.AGENT_NOFILE),
            Ulimit(name="core", soft=0, hard=0),
        ],
        "log_config": LogConfig(
            type="json-file",
            config={
                "max-size": settings.AGENT_LOG_MAX_SIZE,
                "max-file": str(settings.AGENT_LOG_MAX_FILE),
            },
        ),
        "restart_policy": {
            "Name": "on-failure",
            "MaximumRetryCount": settings.AGENT_RESTART_MAX_RETRIES,
        },
        "ipc_mode": "private",
        "init": True,  # reaps zombies, so the pids cap counts live processes
    }


def run_container(droplet: Droplet, spec: ContainerSpec) -> str:
    """Create and start a container from ``spec``; returns its id.

    A container created but not started is removed again, so a failure leaves
    nothing behind on the droplet.
    """
    with operation(droplet, "create container") as client:
        network = ensure_agent_network(client, droplet)
        container = client.containers.create(
            image=spec.image,
            entrypoint=spec.command[:1] if spec.command else None,
            command=spec.command[1:] if spec.command else None,
            name=spec.name,
            environment=spec.environment,
            labels=spec.labels,
            network=network,
            healthcheck=spec.healthcheck,
            extra_hosts=spec.extra_hosts or None,
            **_host_config_kwargs(spec),
        )
        try:
            container.start()
        except Exception:
            container.remove(force=True)
            raise
        return container.id


def start_container(droplet: Droplet, container_id: str) -> None:
    with operation(droplet, "start container") as client:
        client.api.start(container_id)


def stop_container(droplet: Droplet, container_id: str, *, timeout: int | None = None) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds (Docker's own stop)."""
    grace = settings.CONTAINER_STOP_TIMEOUT_SECONDS if timeout is None else timeout
    with operation(droplet, "stop container") as client:
        client.api.stop(container_id, timeout=grace)


def remove_container(droplet: Droplet, container_id: str) -> None:
    """Remove the container (killing it if it runs); a missing one is not an error."""
    try:
        with operation(droplet, "remove container") as client:
            client.api.remove_container(container_id, force=True)
    except DropletError as exc:
        if not exc.not_found:
            raise


def container_state(droplet: Droplet, container_id: str) -> ContainerState:
    with operation(droplet, "inspect container") as client:
        attrs = client.api.inspect_container(container_id)
    state = attrs["State"]
    return ContainerState(
        id=attrs["Id"],
        status=state["Status"],
        running=state["Running"],
        exit_code=state.get("ExitCode"),
        oom_killed=state.get("OOMKilled", False),
        restart_count=attrs.get("RestartCount", 0),
        health=(state.get("Health") or {}).get("Status"),
        started_at=state.get("StartedAt"),
        error=state.get("Error", ""),
    )


def container_stats(droplet: Droplet, container_id: str) -> ContainerStats:
    """One CPU and memory sample (the engine takes about a second to measure CPU)."""
    with operation(droplet, "read container stats") as client:
        stats = client.api.stats(container_id, stream=False)
    cpu, pre = stats.get("cpu_stats", {}), stats.get("precpu_stats", {})
    cpu_delta = cpu.get("cpu_usage", {}).get("total_usage", 0) - pre.get("cpu_usage", {}).get(
        "total_usage", 0
    )
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    online = cpu.get("online_cpus") or len(cpu.get("cpu_usage", {}).get("percpu_usage") or [1])
    percent = cpu_delta / system_delta * online * 100 if system_delta > 0 else 0.0
    memory = stats.get("memory_stats", {})
    usage = memory.get("usage", 0) - memory.get("stats", {}).get("cache", 0)
    return ContainerStats(
        cpu_percent=round(percent, 2),
        memory_bytes=max(usage, 0),
        memory_limit_bytes=memory.get("limit", 0),
    )


def container_logs(
    droplet: Droplet,
    container_id: str,
    *,
    tail: int = 100,
    follow: bool = False,
    since: dt.datetime | None = None,
) -> Iterator[bytes]:
    """The container's output, line by line; with ``follow``, until it stops."""
    # A followed stream may be quiet for long stretches: no short read timeout.
    timeout = settings.LOG_FOLLOW_TIMEOUT_SECONDS if follow else None
    with operation(droplet, "read container logs", timeout=timeout) as client:
        stream = client.api.logs(
            container_id,
            stdout=True,
            stderr=True,
            stream=True,
            follow=follow,
            tail=tail,
            since=since,
        )
        yield from stream


def list_containers(droplet: Droplet, *, label: str) -> list[ContainerSummary]:
    """Every container on the droplet carrying ``label``, running or not."""
    with operation(droplet, "list containers") as client:
        found = client.api.containers(all=True, filters={"label": label})
    return [
        ContainerSummary(
            id=item["Id"],
            name=(item.get("Names") or ["?"])[0].lstrip("/"),
            status=item.get("State", ""),
            labels=item.get("Labels") or {},
        )
        for item in found
    ]


def ping(droplet: Droplet) -> None:
    """Raise DropletError unless the droplet's engine answers."""
    with operation(droplet, "ping", timeout=settings.DOCKER_PING_TIMEOUT_SECONDS) as client:
        client.ping()
