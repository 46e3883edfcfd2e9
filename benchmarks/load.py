"""Load: 200 agents heartbeating and long-polling, 32 gateway clients, a trickle of
webhooks, for N minutes against the control plane as production runs it.

    ./dev bench load [--minutes 10] [--agents 200] [--gateway-clients 32]

Starts its own servers: the provider stand-in, a Redis server on a free port,
and ``safer_claw.asgi`` under uvicorn (one worker per core, DEBUG off) on a
PostgreSQL cluster of its own (``initdb``, run as ``postgres`` when root, on a
free port; removed afterwards). Every agent keeps one ``GET /agent-api/v1/inbox?wait=25`` open (as
the runtime does; 204 when nothing came) and posts a heartbeat every 10 s; the
gateway clients call ``/gateway/openai/v1/chat/completions`` back to back (the
stand-in answers at once); every 2 s a signed Stripe event (one this app
ignores: stored, answered 200) and a kill-switch call with a bad signature
(answered 401, refused) arrive. An "error" is any answer but the one expected
(or no answer). Printed: requests, errors, p50/p99 per endpoint; the control
plane's RSS (all uvicorn processes), open fds and PostgreSQL connections after
warm-up, each minute, and at the end. Long-poll latency is its wait, by design.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gateway_targets import (
    UPSTREAM_KEY,
    free_port,
    gateway_env,
    process,
    run_manage,
    standin,
    uvicorn_command,
    wait_ready,
)
from safer_claw.tests.faults.harness import PgCluster

DATABASE = "load_bench"
WEBHOOK_SECRET = "whsec_load_bench_" + secrets.token_hex(16)  # this run's own
HEARTBEAT_SECONDS = 10
TRICKLE_SECONDS = 2
WARM_UP_SECONDS = 20
MODEL = "gpt-4o-mini"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}

# Run with manage.py shell -c: running, paid agents with limits no run reaches, no
# queued message (so their polls wait), a price; prints their tokens as JSON.
PREPARE = """
import json
from decimal import Decimal
from django.contrib.auth import get_user_model
from agents.models import Agent
from agents.services import create_agent
from agents.tokens import issue_agent_token
from gateway.models import ModelPrice
owner = get_user_model().objects.create_user("load@example.com", "load-password-1")
tokens = []
for number in range({count}):
    agent = create_agent(owner=owner, name=f"load-{{number}}", provider="openai",
                         provider_key={key!r})
    Agent.objects.filter(pk=agent.pk).update(
        status="running", billing_active=True, daily_token_cap=10**12,
        monthly_cost_cap=Decimal("1000000"), max_requests_per_minute=1_000_000,
        max_model_steps_per_run=10**9, max_tool_calls_per_run=10**9,
        max_tool_calls_per_day=10**9,
    )
    tokens.append(issue_agent_token(agent=agent))
ModelPrice.objects.update_or_create(provider="openai", model={model!r}, defaults=dict(
    input_per_mtok=Decimal("0.15"), cached_input_per_mtok=Decimal("0.075"),
    cache_write_5m_per_mtok=Decimal("0.1875"), cache_write_1h_per_mtok=Decimal("0.30"),
    output_per_mtok=Decimal("0.60")))
print(json.dumps(tokens))
"""


class Stats:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.examples: dict[str, str] = {}
        self.measuring = False

    def record(self, endpoint: str, started: float, ok: bool, detail: str = "") -> None:
        if not self.measuring:
            return
        self.latencies[endpoint].append(time.perf_counter() - started)
        if not ok:
            self.errors[endpoint] += 1
            self.examples.setdefault(endpoint, detail[:200])


async def timed(stats: Stats, endpoint: str, expect: int, request) -> None:
    started = time.perf_counter()
    try:
        response = await request
        ok = response.status_code == expect
        detail = f"{response.status_code} {response.text[:150]}"
    except httpx.HTTPError as exc:
        ok, detail = False, f"{exc.__class__.__name__}: {exc}"
    stats.record(endpoint, started, ok, detail)


async def agent_loop(client: httpx.AsyncClient, token: str, stats: Stats, stop: asyncio.Event):
    headers = {"Authorization": f"Bearer {token}"}

    async def beat() -> None:
        while not stop.is_set():
            await timed(
                stats, "heartbeat", 204, client.post("/agent-api/v1/heartbeat", headers=headers)
            )
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def poll() -> None:
        while not stop.is_set():
            request = client.get("/agent-api/v1/inbox", params={"wait": 25}, headers=headers)
            await timed(stats, "inbox (long poll)", 204, request)

    await asyncio.gather(beat(), poll())


async def gateway_loop(client: httpx.AsyncClient, token: str, stats: Stats, stop: asyncio.Event):
    headers = {"Authorization": f"Bearer {token}"}
    while not stop.is_set():
        request = client.post("/gateway/openai/v1/chat/completions", json=CHAT, headers=headers)
        await timed(stats, "gateway chat", 200, request)


def stripe_event() -> tuple[str, str]:
    import stripe

    payload = json.dumps(
        {
            "id": f"evt_load_{secrets.token_hex(8)}",
            "object": "event",
            "type": "customer.created",
            "created": int(time.time()),
            "livemode": False,
            "api_version": "2026-10-28.endive",
            "data": {"object": {"id": f"cus_{secrets.token_hex(6)}", "object": "customer"}},
        }
    )
    return payload, stripe.WebhookSignature.generate_signature_header(payload, WEBHOOK_SECRET)


async def webhook_loop(client: httpx.AsyncClient, stats: Stats, stop: asyncio.Event) -> None:
    while not stop.is_set():
        payload, signature = stripe_event()
        stripe_call = client.post(
            "/webhooks/stripe",
            content=payload,
            headers={"Content-Type": "application/json", "Stripe-Signature": signature},
        )
        await timed(stats, "stripe webhook", 200, stripe_call)
        kill = client.post(
            f"/webhooks/agent-kill/{secrets.token_hex(16)}",
            content=b'{"action": "stop"}',
            headers={
                "Content-Type": "application/json",
                "X-SaferClaw-Timestamp": str(int(time.time())),
                "X-SaferClaw-Signature": "v2=" + "0" * 64,
            },
        )
        await timed(stats, "kill webhook (bad signature)", 401, kill)
        await asyncio.sleep(TRICKLE_SECONDS)


def process_tree(root: int) -> list[int]:
    pids, queue = [], [root]
    while queue:
        pid = queue.pop()
        pids.append(pid)
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        queue.extend(int(child) for child in children)
    return pids


def resources(server_pid: int, postgres: str) -> dict[str, float]:
    rss = fds = 0
    for pid in process_tree(server_pid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rss += int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, StopIteration):
            continue
    with psycopg.connect(f"{postgres}/postgres") as conn:
        conns = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [DATABASE]
        ).fetchone()[0]
    return {"rss_mib": rss / 1024, "fds": fds, "pg_connections": conns}


def show(label: str, sample: dict[str, float]) -> None:
    print(
        f"  {label:<10} RSS {sample['rss_mib']:7.1f} MiB   fds {sample['fds']:5d}   "
        f"PostgreSQL connections {sample['pg_connections']:3d}",
        flush=True,
    )


async def drive(base: str, tokens: list[str], args, server_pid: int, postgres: str) -> Stats:
    stats = Stats()
    stop = asyncio.Event()
    # Idle connections are dropped before uvicorn's 5 s keep-alive ends, or a
    # heartbeat sent on one the server is closing fails with no fault of its own.
    limits = httpx.Limits(
        max_connections=len(tokens) * 2 + args.gateway_clients + 16, keepalive_expiry=3
    )
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        tasks = [asyncio.create_task(agent_loop(client, t, stats, stop)) for t in tokens]
        tasks += [
            asyncio.create_task(gateway_loop(client, tokens[n % len(tokens)], stats, stop))
            for n in range(args.gateway_clients)
        ]
        tasks.append(asyncio.create_task(webhook_loop(client, stats, stop)))
        await asyncio.sleep(WARM_UP_SECONDS)
        stats.measuring = True
        samples = [resources(server_pid, postgres)]
        show("warm", samples[0])
        deadline = time.monotonic() + args.minutes * 60
        minute = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(min(60, max(0.0, deadline - time.monotonic())))
            minute += 1
            samples.append(resources(server_pid, postgres))
            show(f"minute {minute}", samples[-1])
        stats.measuring = False
        stop.set()
        await asyncio.wait(tasks, timeout=40)
        for task in tasks:
            task.cancel()
    stats.samples = samples
    return stats


def report(stats: Stats, minutes: float) -> None:
    print(f"\nper endpoint over {minutes:g} min (after {WARM_UP_SECONDS} s warm-up):")
    print(f"  {'endpoint':<30} {'requests':>9} {'errors':>7} {'p50 ms':>9} {'p99 ms':>9}")
    for endpoint, samples in sorted(stats.latencies.items()):
        ordered = sorted(samples)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        print(
            f"  {endpoint:<30} {len(samples):>9} {stats.errors[endpoint]:>7} "
            f"{statistics.median(ordered) * 1000:>9.1f} {p99 * 1000:>9.1f}"
        )
    for endpoint, example in stats.examples.items():
        print(f"  first error on {endpoint}: {example}")
    first, last = stats.samples[0], stats.samples[-1]
    print(
        f"\ncontrol plane: RSS {first['rss_mib']:.1f} -> {last['rss_mib']:.1f} MiB, "
        f"fds {first['fds']} -> {last['fds']}, "
        f"PostgreSQL connections {first['pg_connections']} -> {last['pg_connections']}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--gateway-clients", type=int, default=32)
    args = parser.parse_args(argv)
    print(f"load: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    logs = Path(tempfile.mkdtemp(prefix="saferclaw-load-"))
    with ExitStack() as stack:
        upstream = stack.enter_context(standin(logs, reply_words=5))
        if upstream.down:
            sys.exit(f"stand-in down: {upstream.down}")
        base_upstream = upstream.urls["openai"].rsplit("/chat/completions", 1)[0]
        redis_port = free_port()
        stack.enter_context(
            process(
                "redis",  # its own too
                ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
                dict(os.environ),
                logs,
            )
        )
        # A PostgreSQL cluster of its own: the control plane's pools may open
        # more connections than a shared server has room for.
        cluster = PgCluster()
        stack.callback(cluster.destroy)
        cluster.init()
        cluster.start()
        cluster.create_database(DATABASE)
        postgres = cluster.url("").rstrip("/")
        env = {
            **gateway_env(base_upstream.rsplit("/v1", 1)[0]),
            "DATABASE_URL": f"{postgres}/{DATABASE}",
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "STRIPE_SECRET_KEY": "sk_test_load_bench_not_used",
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRIPE_API_BASE": "http://127.0.0.1:9",  # never called: the events are ignored
            "STATIC_ROOT": str(logs / "static"),
            "API_ANON_RATE": "100000/minute",
        }
        run_manage(env, "migrate", "--noinput", "--verbosity", "0")
        script = PREPARE.format(count=args.agents, key=UPSTREAM_KEY, model=MODEL)
        tokens = json.loads(run_manage(env, "shell", "-c", script).splitlines()[-1])
        port = free_port()
        command = uvicorn_command(
            "safer_claw.asgi:application", port, "--workers", str(os.cpu_count() or 1)
        )
        log_path = stack.enter_context(process("control-plane", command, env, logs))
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, log_path, timeout=60)
        server_pid = find_server(port)
        print(
            f"{len(tokens)} agents, {args.gateway_clients} gateway clients, "
            f"{args.minutes:g} min; logs in {logs}",
            flush=True,
        )
        stats = asyncio.run(drive(base, tokens, args, server_pid, postgres))
        report(stats, args.minutes)
    shutil.rmtree(logs, ignore_errors=True)


def find_server(port: int) -> int:
    """The uvicorn parent listening on ``port`` (its workers are its children)."""
    import subprocess

    out = subprocess.run(
        ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    pid = int(out.split("pid=")[1].split(",")[0])
    # A worker may hold the socket: walk up to the process whose parent is not uvicorn.
    parent = int(Path(f"/proc/{pid}/stat").read_text().split()[3])
    return parent if "uvicorn" in Path(f"/proc/{parent}/cmdline").read_text() else pid


if __name__ == "__main__":
    main()
