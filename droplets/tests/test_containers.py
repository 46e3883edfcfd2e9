"""Hardened containers on real Docker engines, read back with docker inspect."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from droplets.containers import (
    ContainerSpec,
    container_logs,
    container_state,
    container_stats,
    remove_container,
    run_container,
    stop_container,
)
from droplets.docker_client import DropletError
from droplets.tests.fixtures import TEST_CONTROL_PLANE_PORT

pytestmark = [pytest.mark.docker, pytest.mark.django_db]


def spec(**changes) -> ContainerSpec:
    from django.conf import settings

    values = {
        "name": f"saferclaw-test-{uuid.uuid4().hex[:10]}",
        "image": settings.RUNTIME_IMAGE,
        "environment": {"AGENT_TOKEN": "sca_test", "CONTROL_PLANE_URL": "http://172.31.1.1:8000"},
        "labels": {"saferclaw.agent": str(uuid.uuid4()), "saferclaw.owner": "owner-1"},
        "cpus": 0.5,
        "memory_bytes": 512 * 1024**2,
        "pids_limit": 100,
    }
    return ContainerSpec(**{**values, **changes})


def wait_until(predicate, *, timeout: float, every: float = 0.25, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def run(engine, container_id: str, *command: str) -> tuple[int, str]:
    result = engine.containers.get(container_id).exec_run(list(command))
    return result.exit_code, result.output.decode(errors="replace")


@pytest.fixture(params=["local_droplet", "tls_droplet"])
def any_droplet(request):
    """Each test with this fixture runs on both engines (unix socket and mutual TLS)."""
    droplet = request.getfixturevalue(request.param)
    engine_name = "d1" if request.param == "local_droplet" else "d2"
    return droplet, request.getfixturevalue("engines")[engine_name]


# --- Every flag, read back ----------------------------------------------------------

FLAGS = [
    ("HostConfig.NanoCpus", lambda v: v == 500_000_000),
    ("HostConfig.Memory", lambda v: v == 512 * 1024**2),
    ("HostConfig.MemorySwap", lambda v: v == 512 * 1024**2),  # equal: no swap
    ("HostConfig.PidsLimit", lambda v: v == 100),
    ("HostConfig.ReadonlyRootfs", lambda v: v is True),
    ("HostConfig.CapDrop", lambda v: v == ["ALL"]),
    ("HostConfig.CapAdd", lambda v: not v),
    ("HostConfig.SecurityOpt", lambda v: v == ["no-new-privileges"]),  # seccomp default kept
    ("HostConfig.Privileged", lambda v: v is False),
    ("Config.User", lambda v: v == "10001:10001"),
    (
        "HostConfig.Tmpfs",
        lambda v: (
            set(v) == {"/tmp"}
            and {"noexec", "nosuid", "nodev", "size=64m", "uid=10001", "gid=10001"}
            <= set(v["/tmp"].split(","))
        ),
    ),
    (
        "HostConfig.Ulimits",
        lambda v: (
            {(u["Name"], u["Soft"], u["Hard"]) for u in v}
            == {("nofile", 1024, 1024), ("core", 0, 0)}
        ),
    ),
    (
        "HostConfig.LogConfig",
        lambda v: v["Type"] == "json-file" and v["Config"] == {"max-size": "10m", "max-file": "3"},
    ),
    (
        "HostConfig.RestartPolicy",
        lambda v: v == {"Name": "on-failure", "MaximumRetryCount": 3},
    ),
    ("HostConfig.PortBindings", lambda v: not v),
    ("HostConfig.PublishAllPorts", lambda v: v is False),
    ("HostConfig.Binds", lambda v: not v),
    ("Mounts", lambda v: v == []),
    ("HostConfig.NetworkMode", lambda v: v == "saferclaw-agents"),
    ("HostConfig.IpcMode", lambda v: v == "private"),
    ("HostConfig.PidMode", lambda v: v == ""),  # not the host's
    ("HostConfig.Devices", lambda v: not v),
    (
        "Config.Labels",
        lambda v: {"saferclaw.agent", "saferclaw.owner"} <= set(v),
    ),
    (
        "Config.Env",
        lambda v: (
            {e.split("=", 1)[0] for e in v} - IMAGE_ENV == {"AGENT_TOKEN", "CONTROL_PLANE_URL"}
        ),
    ),
]
IMAGE_ENV = {"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}


@pytest.fixture
def inspected(any_droplet):
    droplet, engine = any_droplet
    container_id = run_container(droplet, spec())
    return engine.api.inspect_container(container_id)


@pytest.mark.parametrize(("path", "check"), FLAGS, ids=[f[0] for f in FLAGS])
def test_container_is_created_with_every_hardening_flag(inspected, path, check):
    value = inspected
    for part in path.split("."):
        value = value[part]
    assert check(value), f"{path} = {value!r}"


def test_agent_network_blocks_inter_container_traffic(any_droplet):
    droplet, engine = any_droplet
    run_container(droplet, spec())
    network = engine.networks.get("saferclaw-agents")
    assert network.attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    assert network.attrs["IPAM"]["Config"][0]["Subnet"] == droplet.agent_subnet


# --- Behaviour inside the container ------------------------------------------------------


def test_root_is_read_only_and_tmp_is_writable_but_noexec(local_droplet, engines):
    container_id = run_container(local_droplet, spec())
    code, out = run(engines["d1"], container_id, "python3", "-c", "open('/oops', 'w')")
    assert code != 0
    assert "Read-only file system" in out

    code, out = run(engines["d1"], container_id, "sh", "-c", "cp /bin/true /tmp/t && /tmp/t")
    assert code == 126, out  # copied (so /tmp is writable by uid 10001) but not executable
    assert "Permission denied" in out


def test_process_has_no_capabilities_and_no_new_privileges(local_droplet, engines):
    container_id = run_container(local_droplet, spec())
    for pid in ("1", "self"):
        _, status = run(engines["d1"], container_id, "cat", f"/proc/{pid}/status")
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(fields[cap], 16) == 0, (pid, cap, fields[cap])
        assert fields["NoNewPrivs"].strip() == "1"
        assert fields["Uid"].split()[0] == "10001"


FORK_BOMB = """
import os, time
children = 0
while True:
    try:
        pid = os.fork()
    except OSError:
        print("refused after", children, flush=True)
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children += 1
"""


def pids_now(engine, container_id: str) -> int:
    """The container's process count as the engine reads it from its cgroup. A one-shot
    stats read can come back before the engine has sampled the cgroup (no ``current``
    yet, seen once in CI): read again."""
    for _ in range(50):
        stats = engine.api.stats(container_id, stream=False)
        if "current" in stats.get("pids_stats", {}):
            return stats["pids_stats"]["current"]
        time.sleep(0.1)
    pytest.fail(f"the engine never reported the container's pids: {stats.get('pids_stats')}")


def test_fork_bomb_stops_at_the_pids_limit_and_the_host_is_fine(local_droplet, engines):
    container_id = run_container(local_droplet, spec(pids_limit=40))
    _, out = run(engines["d1"], container_id, "python3", "-c", FORK_BOMB)
    refused_after = int(re.search(r"refused after (\d+)", out).group(1))
    assert refused_after < 40
    assert pids_now(engines["d1"], container_id) <= 40
    assert subprocess.run(["true"], check=False).returncode == 0  # the host still forks


MEMORY_HOG = "hog = []\nwhile True: hog.append(bytearray(4 * 1024 * 1024))"


def test_memory_hog_is_oom_killed_and_restarts_stop_at_the_policy_count(local_droplet):
    container_id = run_container(
        local_droplet,
        spec(
            memory_bytes=48 * 1024**2,
            command=["python3", "-c", MEMORY_HOG],
            healthcheck={"Test": ["NONE"]},
        ),
    )

    def settled():
        state = container_state(local_droplet, container_id)
        return state if state.status == "exited" and state.restart_count == 3 else None

    state = wait_until(settled, timeout=60, what="three restarts, then exited")
    assert state.oom_killed is True
    assert state.running is False
    time.sleep(2)  # and it stays down: no fourth restart
    assert container_state(local_droplet, container_id).restart_count == 3


def test_the_runtime_runs_no_health_check_process(any_droplet):
    """Liveness comes from the runtime's own polls: Docker starts nothing in the container."""
    droplet, engine = any_droplet
    container_id = run_container(droplet, spec())
    inspected = engine.api.inspect_container(container_id)
    assert not (inspected["Config"].get("Healthcheck") or {}).get("Test")
    assert "Health" not in inspected["State"]
    assert container_state(droplet, container_id).health is None
    wait_until(
        lambda: len(engine.api.top(container_id)["Processes"]) >= 2, timeout=10, what="started"
    )
    commands = [process[-1] for process in engine.api.top(container_id)["Processes"]]
    assert len(commands) == 2, commands  # docker-init and the runtime, nothing else
    assert any("agent_runtime" in command for command in commands)


LOG_FLOOD = "import sys\nline = 'x' * 1000 + '\\n'\nfor _ in range(20000): sys.stdout.write(line)"


def test_log_flood_stays_within_max_size_times_max_file(local_droplet, engines, settings):
    settings.AGENT_LOG_MAX_SIZE, settings.AGENT_LOG_MAX_FILE = "1m", 2
    container_id = run_container(
        local_droplet,
        spec(command=["python3", "-c", LOG_FLOOD + "\nimport time; time.sleep(600)"]),
    )
    log_path = Path(engines["d1"].api.inspect_container(container_id)["LogPath"])
    wait_until(
        lambda: log_path.with_name(log_path.name + ".1").exists(),
        timeout=30,
        what="a rotated log file",
    )
    time.sleep(1)
    files = list(log_path.parent.glob(log_path.name + "*"))
    total = sum(f.stat().st_size for f in files)
    assert len(files) <= 2
    assert total <= 2 * 1024 * 1024 * 1.05, f"{total} bytes in {len(files)} files"  # 20 MB written


# --- Network isolation ---------------------------------------------------------------------

PROBE = """
import socket, sys
s = socket.socket()
s.settimeout(2)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except OSError as exc:
    print("refused", type(exc).__name__)
"""


@contextlib.contextmanager
def listener(host: str, port: int = 0):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(8)
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                server.accept()[0].close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()


@contextlib.contextmanager
def metadata_address():
    """169.254.169.254 on this machine's loopback, as a cloud's metadata service."""
    subprocess.run(
        ["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"], check=False, capture_output=True
    )
    try:
        yield "169.254.169.254"
    finally:
        subprocess.run(
            ["ip", "addr", "del", "169.254.169.254/32", "dev", "lo"],
            check=False,
            capture_output=True,
        )


def probe(engine, container_id: str, host: str, port: int) -> str:
    return run(engine, container_id, "python3", "-c", PROBE, host, str(port))[1].strip()


def test_agents_reach_only_the_control_plane(local_droplet, engines, agent_firewall):
    engine = engines["d1"]
    server_id = run_container(
        local_droplet,
        spec(command=["python3", "-m", "http.server", "8080"]),
    )
    client_id = run_container(local_droplet, spec())
    server_ip = engine.api.inspect_container(server_id)["NetworkSettings"]["Networks"][
        "saferclaw-agents"
    ]["IPAddress"]
    gateway = engine.networks.get("saferclaw-agents").attrs["IPAM"]["Config"][0]["Gateway"]
    wait_until(
        lambda: "connected" in probe(engine, server_id, "127.0.0.1", 8080),
        timeout=10,
        what="the server container to listen",
    )

    with listener("0.0.0.0", TEST_CONTROL_PLANE_PORT):
        assert probe(engine, client_id, gateway, TEST_CONTROL_PLANE_PORT) == "connected"
    with listener("0.0.0.0") as other_port:
        assert probe(engine, client_id, gateway, other_port).startswith("refused")
    assert probe(engine, client_id, server_ip, 8080).startswith("refused")
    with metadata_address() as address, listener(address, 80):
        assert probe(engine, client_id, address, 80).startswith("refused")


# --- Lifecycle operations ------------------------------------------------------------------


def test_stop_is_graceful_and_remove_is_idempotent(any_droplet):
    droplet, _ = any_droplet
    container_id = run_container(droplet, spec())
    wait_until(
        lambda: b'"event":"starting"' in b"".join(container_logs(droplet, container_id)),
        timeout=20,
        what="the runtime to start",
    )
    stop_container(droplet, container_id, timeout=10)
    state = container_state(droplet, container_id)
    # Exit 0, not 137: SIGTERM ended it cleanly, no SIGKILL after the grace period.
    assert (state.status, state.exit_code) == ("exited", 0)
    assert b'"event":"stopping"' in b"".join(container_logs(droplet, container_id))
    remove_container(droplet, container_id)
    remove_container(droplet, container_id)  # already gone: not an error
    with pytest.raises(DropletError) as excinfo:
        container_state(droplet, container_id)
    assert excinfo.value.not_found
    assert excinfo.value.permanent


def test_stats_report_cpu_and_memory(local_droplet):
    container_id = run_container(local_droplet, spec())
    stats = container_stats(local_droplet, container_id)
    assert stats.memory_limit_bytes == 512 * 1024**2
    assert 0 < stats.memory_bytes < stats.memory_limit_bytes
    assert stats.cpu_percent >= 0


def test_logs_follow_ends_when_the_container_stops(local_droplet):
    container_id = run_container(local_droplet, spec())
    lines = []

    def follow():
        lines.extend(container_logs(local_droplet, container_id, tail=0, follow=True))

    reader = threading.Thread(target=follow)
    reader.start()
    time.sleep(1)
    stop_container(local_droplet, container_id, timeout=5)
    reader.join(timeout=20)
    assert not reader.is_alive()
    assert any(b"stop" in line for line in lines)


def test_missing_image_is_a_permanent_error_and_leaves_nothing(local_droplet, engines):
    with pytest.raises(DropletError) as excinfo:
        run_container(local_droplet, spec(image="saferclaw/does-not-exist:1"))
    assert excinfo.value.permanent
    assert not engines["d1"].containers.list(all=True, filters={"label": "saferclaw.agent"})
