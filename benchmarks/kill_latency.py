"""Kill switch latency, measured from outside on PostgreSQL while clients poll the gateway.

    ./dev bench kill_latency [KILLS]      (default 20)

The app runs as in production: ``safer_claw.asgi`` under uvicorn (uvloop, httptools,
DEBUG off) on a fresh PostgreSQL database (``kill_bench`` on ``BENCH_POSTGRES_URL``,
default ``postgres://postgres@127.0.0.1:5432``; made and dropped here) with Redis db 7
(flushed) for the gateway's rate limits, and the model provider stand-in
(``benchmarks/upstream_standin.py``) behind the gateway. KILLS agents run in real
containers on the local test droplet (``scripts/droplets/up``; run it under the shared
Docker lock).

For each kill, a process of its own calls the gateway with the agent's token: ``POLLERS``
clients send real chat completions in a loop (a busy agent), and a probe sends a call the
gateway refuses after the token check, for resolution. A watcher asks the engine whether
the container still runs. Then one signed ``POST /webhooks/agent-kill/<id>`` (v2) is sent.
Measured from just before it is sent (CLOCK_MONOTONIC in both processes):
- token refused: the first gateway answer refusing the token is *received* (an upper
  bound: the refusal took effect before that call was looked up);
- container stopped: the engine first reports the container not running;
- kill answered: the webhook's own response is received.
Any gateway call sent after the kill was answered and still accepted is counted as a leak
(there must be none); those sent after the first refusal and accepted are counted too (a
gateway worker may admit a busy agent's calls from a lease for up to
GATEWAY_LEASE_SECONDS after the revocation: gateway.leases).

Baselines, from the same run, with the same pollers:
- token revoked by SQL: one ``UPDATE`` of a token row from this process, no HTTP: the
  floor of how fast the gateway can be seen to refuse any revocation;
- the kill URL refused at once (``GET``, 405, audited) and the Django request cycle
  (``GET /webhooks/stripe``, 405): what reaching the kill switch costs, and what it cost
  through Django's handler;
- engine alone: an agent's container stopped with the Docker SDK.
Ratios against them are printed, and the machine.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import socket
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.deploy_latency import machine, percentile  # noqa: E402
from benchmarks.gateway_targets import (  # noqa: E402
    POSTGRES,
    REDIS_URL,
    UPSTREAM_KEY,
    gateway_env,
    process,
    standin,
    uvicorn_command,
    wait_ready,
)

DATABASE = "kill_bench"
SECRET = "bench-operator-secret-" + "k" * 32
POLLERS = 4
MODEL = "gpt-4o-mini"
COMPLETION = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 16}
).encode()
# Refused with 400 (no price) after the token check, before any upstream call.
PROBE = json.dumps(
    {"model": "unpriced-probe", "messages": [{"role": "user", "content": "?"}], "max_tokens": 1}
).encode()
# The port the test droplet's firewall opens to agent containers, so they heartbeat.
CONTROL_PLANE_PORT = 18000
BASELINE_RUNS = 20
ENGINE_STOPS = 5


def main(kills: int = 20) -> None:
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        logs = Path(folder)
        upstream = stack.enter_context(standin(logs, reply_words=5)).urls["openai"]
        upstream = upstream.removesuffix("/v1/chat/completions")
        port = CONTROL_PLANE_PORT if port_is_free(CONTROL_PLANE_PORT) else free_port()
        env = bench_env(upstream, port)
        recreate_database()
        stack.callback(drop_database)
        setup_django(env)
        from droplets.tests.fixtures import _read_env_file

        droplet_env = _read_env_file()
        env["RUNTIME_IMAGE"] = droplet_env["SAFERCLAW_RUNTIME_IMAGE"]
        command = uvicorn_command("safer_claw.asgi:application", port)
        command[command.index("127.0.0.1")] = "0.0.0.0"  # noqa: S104 - the containers dial it
        log_path = stack.enter_context(process("app", command, env, logs))
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, log_path, timeout=60)
        run_benchmark(droplet_env, port, kills)


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))  # noqa: S104 - only a probe
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bench_env(upstream: str, port: int) -> dict[str, str]:
    env = gateway_env(upstream)
    env.update(
        DATABASE_URL=f"{POSTGRES}/{DATABASE}",
        KILL_SWITCH_SECRET=SECRET,
        ALLOWED_HOSTS="127.0.0.1,localhost,172.31.1.1",
        CONTROL_PLANE_URL=f"http://172.31.1.1:{port}",
    )
    return env


def recreate_database() -> None:
    import psycopg

    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {DATABASE}")


def drop_database() -> None:
    from django.db import connections

    connections.close_all()
    import psycopg

    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


def setup_django(env: dict[str, str]) -> None:
    """This process uses the app's own settings and database (to deploy and to baseline)."""
    os.environ.update(env, DJANGO_SETTINGS_MODULE="safer_claw.settings")
    import django
    import redis
    from django.core.management import call_command

    django.setup()
    redis.Redis.from_url(REDIS_URL).flushdb()  # db 7 is the benchmarks' own
    call_command("migrate", verbosity=0)


# --- The run ----------------------------------------------------------------------------------


def run_benchmark(droplet_env: dict[str, str], port: int, kills: int) -> None:
    import docker

    from safer_claw.accounts.models import User

    owner = User.objects.create_user("bench@example.com", "bench-password-1")
    engine = docker.DockerClient(base_url=droplet_env["SAFERCLAW_D1_DOCKER_URL"])
    base = f"127.0.0.1:{port}"
    pollers = RemotePollers(base)
    try:
        agents = deploy_agents(owner, droplet_env, port, kills + 1 + ENGINE_STOPS)
        results = [
            measure_kill(base, pollers, engine, agent, token) for agent, token in agents[:kills]
        ]
        spare = agents[kills][0]
        floor = [measure_sql_revoke(pollers, spare) for _ in range(BASELINE_RUNS)]
        kill_url, stripe_url = f"/webhooks/agent-kill/{spare.id}", "/webhooks/stripe"
        front = under_load(
            pollers, spare, lambda: measure_round_trip(base, kill_url, BASELINE_RUNS)
        )
        django = under_load(
            pollers, spare, lambda: measure_round_trip(base, stripe_url, BASELINE_RUNS)
        )
        engine_stop = [
            under_load(pollers, spare, lambda agent=agent: measure_engine_stop(engine, agent))
            for agent, _ in agents[kills + 1 :]
        ]
    finally:
        pollers.close()
        # Only this run's containers: the engine is shared with test runs.
        mine = {"label": f"saferclaw.owner={owner.id}"}
        for container in engine.containers.list(all=True, filters=mine):
            container.remove(force=True)
        engine.close()
    report(results, floor, front, django, engine_stop)


def deploy_agents(owner, droplet_env, port: int, count: int) -> list[tuple[object, str]]:
    """``count`` running agents on the local droplet, each with the token its container holds."""
    from decimal import Decimal

    from django.conf import settings

    from agents.models import Agent
    from agents.services import create_agent, deploy_agent
    from droplets.tests.fixtures import create_local_droplet
    from gateway.models import ModelPrice

    settings.RUNTIME_IMAGE = droplet_env["SAFERCLAW_RUNTIME_IMAGE"]
    ModelPrice.objects.update_or_create(  # a migration may have priced it already
        provider="openai",
        model=MODEL,
        defaults={
            "input_per_mtok": Decimal("0.15"),
            "cached_input_per_mtok": Decimal("0.075"),
            "cache_write_5m_per_mtok": Decimal("0"),
            "output_per_mtok": Decimal("0.60"),
        },
    )
    create_local_droplet(droplet_env, capacity=count, control_plane_url=f"http://172.31.1.1:{port}")
    agents = []
    for i in range(count):
        agent = create_agent(owner=owner, name=f"kill-{i}", provider_key=UPSTREAM_KEY)
        Agent.objects.filter(pk=agent.pk).update(
            billing_active=True,
            daily_token_cap=10**12,
            monthly_cost_cap=Decimal("1000000"),
            max_requests_per_minute=1_000_000,
        )
        agent = deploy_agent(agent=agent)
        assert agent.status == "running", agent.status_reason
        agents.append((agent, container_env(agent)["AGENT_TOKEN"]))
    return agents


def container_env(agent) -> dict[str, str]:
    from droplets.docker_client import connect

    with connect(agent.droplet) as engine:
        env = engine.api.inspect_container(agent.container_id)["Config"]["Env"]
    return dict(item.split("=", 1) for item in env)


# --- Watching the gateway (in a process of its own) and the container ---------------------------


@dataclass
class Poll:
    sent: float  # time.monotonic(): CLOCK_MONOTONIC, the same clock in every process
    received: float
    status: int
    probe: bool


class Pollers:
    """Threads calling the gateway with one token, until told to stop.

    ``POLLERS`` "busy agent" threads send real chat completions (the load);
    one probe thread asks for a model the price table lacks, which the gateway
    refuses with 400 after the token check and before any upstream call: the
    cheap call that tells, every few milliseconds, whether the token still works.
    """

    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token
        self.polls: list[Poll] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.warm = threading.Barrier(POLLERS + 2)
        self.threads = [
            threading.Thread(target=self._run, args=(probe,), daemon=True)
            for probe in [True] + [False] * POLLERS
        ]
        for thread in self.threads:
            thread.start()
        self.warm.wait(timeout=30)  # every thread has had one call accepted

    def _run(self, probe: bool) -> None:
        host, port = self.base.split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        accepted = 400 if probe else 200
        try:
            status = self._call(connection, headers, probe).status
            assert status == accepted, f"the gateway answered the warm-up call {status}"
            self.warm.wait(timeout=30)
        except Exception as exc:  # reported, and the barrier released
            self.errors.append(repr(exc))
            self.warm.abort()
            return
        while not self.stop.is_set():
            poll = self._call(connection, headers, probe)
            with self.lock:
                self.polls.append(poll)
        connection.close()

    def _call(self, connection, headers: dict[str, str], probe: bool) -> Poll:
        sent = time.monotonic()
        connection.request(
            "POST", "/gateway/openai/v1/chat/completions", PROBE if probe else COMPLETION, headers
        )
        response = connection.getresponse()
        response.read()
        return Poll(sent, time.monotonic(), response.status, probe)

    def until_refused(self, timeout: float = 10) -> list[Poll]:
        """Every poll, once the token has been refused (and a little after, to catch leaks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                refused = any(p.status in (401, 403) for p in self.polls)
            if refused:
                time.sleep(0.05)
                break
            time.sleep(0.001)
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        return self.polls


def poller_process(base: str, pipe) -> None:
    """The child process: for each token sent, poll until it is refused (or told to stop)."""
    while (token := pipe.recv()) is not None:
        pollers = Pollers(base, token)
        pipe.send(pollers.errors or "ready")
        until_refused = pipe.recv()  # sent once the kill (or the measured work) is under way
        pipe.send(pollers.until_refused(timeout=10 if until_refused else 0))


class RemotePollers:
    """The parent's handle on the poller process."""

    def __init__(self, base: str) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.pipe, child = context.Pipe()
        self.process = context.Process(target=poller_process, args=(base, child), daemon=True)
        self.process.start()

    def start(self, token: str) -> None:
        self.pipe.send(token)
        answer = self.pipe.recv()
        if answer != "ready":
            raise SystemExit(f"a poller failed: {answer}")

    def stop(self) -> list[Poll]:
        """Stop polling now (the load was only the background of a baseline)."""
        self.pipe.send(False)
        return self.pipe.recv()

    def refusal(self, answered_at: float) -> tuple[Poll, int, int]:
        """The first refused answer; how many calls sent after it was received were
        accepted (a gateway worker still drawing from a lease, gateway.leases, may
        for up to GATEWAY_LEASE_SECONDS after the revocation); and how many sent after
        the kill was answered (``answered_at``) were (leaks: there must be none)."""
        self.pipe.send(True)
        polls = self.pipe.recv()
        refused = [p for p in polls if p.status in (401, 403)]
        if not refused:
            raise SystemExit("the gateway still accepted the token after 10 s")
        first = min(refused, key=lambda p: p.received)
        accepted = [p for p in polls if p.status in (200, 400)]
        after_refusal = sum(1 for p in accepted if p.sent > first.received)
        leaks = sum(1 for p in accepted if p.sent > answered_at)
        return first, after_refusal, leaks

    def close(self) -> None:
        self.pipe.send(None)
        self.process.join(timeout=30)


class Watch:
    """Polls ``condition`` in a thread until it holds (started before the clock)."""

    def __init__(self, condition) -> None:
        self.condition = condition
        self.held_at: float | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait()

    def _run(self) -> None:
        try:
            assert not self.condition(), "the watched condition held before the kill"
            self.ready.set()
            while not self.condition():
                time.sleep(0.001)
            self.held_at = time.monotonic()
        finally:
            self.ready.set()

    def since(self, started: float) -> float:
        self.thread.join(timeout=60)
        assert self.held_at is not None, "the watched condition never held"
        return self.held_at - started


def is_running(engine, container_id: str) -> bool:
    return engine.api.inspect_container(container_id)["State"]["Running"]


# --- One kill, and the baselines ------------------------------------------------------------


@dataclass
class KillResult:
    refused: float
    stopped: float
    answered: float
    after_refusal: int
    leaks: int


def measure_kill(base: str, pollers: RemotePollers, engine, agent, token: str) -> KillResult:
    body = json.dumps({"action": "stop", "agent_id": str(agent.id)}).encode()
    pollers.start(token)
    stopped = Watch(lambda: not is_running(engine, agent.container_id))
    connection = http.client.HTTPConnection(*base.split(":"), timeout=60)
    connection.connect()  # as a client that already holds a connection
    path = f"/webhooks/agent-kill/{agent.id}"
    headers = {"Content-Type": "application/json", **signed(str(agent.id), body)}

    started = time.monotonic()
    connection.request("POST", path, body, headers)
    response = connection.getresponse()
    answer = response.read()
    answered = time.monotonic() - started

    assert response.status == 200, answer
    refusal, after_refusal, leaks = pollers.refusal(answered_at=started + answered)
    connection.close()
    return KillResult(
        refused=refusal.received - started,
        stopped=stopped.since(started),
        answered=answered,
        after_refusal=after_refusal,
        leaks=leaks,
    )


def signed(agent_id: str, body: bytes) -> dict[str, str]:
    """Version 2: the signature covers the timestamp, the agent id and the body."""
    timestamp = str(int(time.time()))
    message = f"{timestamp}.{agent_id}.".encode() + body
    digest = hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
    return {"X-SaferClaw-Timestamp": timestamp, "X-SaferClaw-Signature": f"v2={digest}"}


def measure_sql_revoke(pollers: RemotePollers, agent) -> float:
    """A fresh token of ``agent`` revoked by one SQL UPDATE; until the gateway refuses it."""
    import psycopg

    from agents.tokens import hash_token, issue_agent_token

    token = issue_agent_token(agent=agent)
    with psycopg.connect(f"{POSTGRES}/{DATABASE}", autocommit=True) as connection:
        pollers.start(token)
        started = time.monotonic()
        connection.execute(
            "UPDATE agents_agenttoken SET revoked_at = now() WHERE token_hash = %s",
            [hash_token(token)],
        )
        refusal, _, _ = pollers.refusal(answered_at=time.monotonic())
    return refusal.received - started


def under_load(pollers: RemotePollers, agent, measure):
    """``measure()`` while the pollers keep the gateway as busy as during a kill."""
    from agents.tokens import issue_agent_token

    pollers.start(issue_agent_token(agent=agent))
    try:
        return measure()
    finally:
        pollers.stop()


def measure_round_trip(base: str, path: str, runs: int) -> list[float]:
    """GET ``path`` (a 405 answer) ``runs`` times on one connection."""
    connection = http.client.HTTPConnection(*base.split(":"), timeout=30)
    connection.connect()
    times = []
    for _ in range(runs):
        started = time.monotonic()
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        times.append(time.monotonic() - started)
        assert response.status == 405, response.status
    connection.close()
    return times


def measure_engine_stop(engine, agent) -> float:
    from django.conf import settings

    stopped = Watch(lambda: not is_running(engine, agent.container_id))
    started = time.monotonic()
    engine.api.stop(agent.container_id, timeout=settings.KILL_SWITCH_STOP_TIMEOUT_SECONDS)
    return stopped.since(started)


# --- The report ---------------------------------------------------------------------------------


def report(
    results: list[KillResult],
    floor: list[float],
    front: list[float],
    django: list[float],
    engine: list[float],
) -> None:
    def row(label: str, values: list[float]) -> None:
        p50, p95, worst = (percentile(values, q) * 1000 for q in (0.5, 0.95, 1.0))
        print(f"{label:44}{p50:>9.1f}{p95:>9.1f}{worst:>9.1f}")

    refused = [r.refused for r in results]
    stopped = [r.stopped for r in results]
    print(f"machine: {machine()}")
    print(
        f"kills: {len(results)} on PostgreSQL (uvicorn, DEBUG off); while each lands, "
        f"{POLLERS} clients send the agent's chat completions through the gateway and "
        "a probe checks its token\n"
    )
    print(f"{'kill request sent ->':44}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    row("  token refused (first refusal received)", refused)
    row("  container stopped", stopped)
    row("  kill answered", [r.answered for r in results])
    print(f"baselines (same run, same gateway load; {BASELINE_RUNS} each, {ENGINE_STOPS} stops)")
    row("  token revoked by SQL -> first refusal", floor)
    row("  kill URL refused at once (GET -> 405)", front)
    row("  Django request cycle (GET /webhooks/stripe)", django)
    row("  engine alone: docker stop -> stopped", engine)
    print(
        "\nratios (p50): token refused / SQL revoke "
        f"{percentile(refused, 0.5) / percentile(floor, 0.5):.2f}, "
        f"container stopped / engine alone {percentile(stopped, 0.5) / percentile(engine, 0.5):.2f}"
    )
    print(
        "gateway calls accepted after the first refusal (from a lease): "
        f"{sum(r.after_refusal for r in results)}"
    )
    print(f"gateway calls accepted after the kill answered: {sum(r.leaks for r in results)}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
