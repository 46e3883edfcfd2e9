"""Where 16 clients' JSON calls through our gateway spend the machine's CPU, against 0.6x of direct.

    ./dev bench gateway_headroom [--providers openai,anthropic] [--rounds 3] [--seconds 6]
                                 [--clients 16] [--floors]

The clients, the stand-in and the proxy share this machine's cores, so closed-loop
throughput is bounded by the machine CPU one call costs across all of them. In one run,
in alternating rounds (the machine is shared, so each target sees the same weather),
``--clients`` closed-loop clients call with the JSON body of ``gateway_latency``:

- the stand-in directly;
- a bare proxy (``benchmarks/bare_proxy.py``: our gateway's server and client pieces,
  relaying with no token, allow-list or metering);
- our gateway without its ledger (``benchmarks/unmetered_gateway.py``: the same
  application, token check, allow-lists, pricing and relay, with every admission an
  in-memory ``ok`` and nothing settled), on the same database and agents;
- our gateway, as ``gateway_latency`` runs it (metering, caps, durable admission);
- with ``--floors``, three more twins (``benchmarks/ledger_floor_gateway.py``): our
  gateway whose whole ledger is each call's own row (no verdict, lock, counter or run
  step): inserted pending and on disk before the call is forwarded, then settled, as
  ours does; the same two writes with the first off the client's path; or one complete
  row inserted at settlement. They bound what a ledger design that keeps a row per call
  can reach here. With them, our gateway with its leases off (``GATEWAY_LEASE_CALLS=1``:
  every call admitted alone before it is forwarded, as before gateway.leases).

Each cell reports requests/s, how busy the whole machine was (``/proc/stat``) and so the
machine CPU per call (ms), and of that the clients' (this process) and the target's own
(the stand-in; the bare proxy's workers; our workers and their PostgreSQL backends).
The median round then gives: the CPU per call that 0.6x of direct allows at the busy
fraction these loops reach, what the bare proxy alone takes of it, what that leaves for
everything else, and what ours spends on it: on the checks (no ledger minus bare) and on
the ledger (ours minus no ledger), against what is left for the ledger once the checks
are paid. For scale it also times one durable one-row
INSERT (its own transaction, committed to disk, ``--clients`` at a time): what a ledger
write costs here when it is not batched. Linux only (``/proc/stat``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.gateway_latency import describe_machine, load, run_cell  # noqa: E402
from benchmarks.gateway_targets import (  # noqa: E402
    CLOCK_TICKS,
    DATABASE,
    MODELS,
    POSTGRES,
    Target,
    bare_proxy,
    log_folder,
    our_gateways,
    own_cpu,
    standin,
)

GOAL = 0.6  # of direct's throughput, the goal


@dataclass(frozen=True)
class Sample:
    """One target's cell: calls per second and what each call cost the machine."""

    throughput: float
    busy: float  # fraction of all cores' time not idle
    cpu_per_call: float  # seconds, all processes
    client_per_call: float  # seconds, this process (the clients)
    own_per_call: float  # seconds, the target's own processes (ours: with its PostgreSQL backends)


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


async def measure(target: Target, provider: str, clients: int, seconds: float) -> Sample:
    await run_cell(target, provider, False, clients, 5, seconds)  # warm connections and pools
    busy0, total0 = machine_ticks()
    client0, own0 = own_cpu(), target.cpu()
    cell = await run_cell(target, provider, False, clients, 10**9, seconds)
    busy1, total1 = machine_ticks()
    calls = len(cell.total)
    if cell.errors or not calls:
        raise SystemExit(f"{target.name}: calls failed: {dict(cell.errors)}")
    return Sample(
        throughput=cell.throughput,
        busy=(busy1 - busy0) / (total1 - total0),
        cpu_per_call=(busy1 - busy0) / CLOCK_TICKS / calls,
        client_per_call=(own_cpu() - client0) / calls,
        own_per_call=(target.cpu() - own0) / calls,
    )


async def durable_insert_cost(clients: int, seconds: float) -> float:
    """Machine CPU seconds per one-row INSERT committed to disk, ``clients`` at a time."""
    dsn = f"{POSTGRES}/{DATABASE}"
    setup = await asyncpg.connect(dsn)
    await setup.execute("CREATE TABLE headroom_probe (id bigserial PRIMARY KEY, n integer)")
    pool = await asyncpg.create_pool(
        dsn, min_size=clients, max_size=clients, server_settings={"synchronous_commit": "on"}
    )
    done = 0
    deadline = time.perf_counter() + seconds

    async def writer() -> None:
        nonlocal done
        async with pool.acquire() as conn:
            while time.perf_counter() < deadline:
                await conn.fetchval("INSERT INTO headroom_probe (n) VALUES (1) RETURNING id")
                done += 1

    try:
        busy0, _ = machine_ticks()
        await asyncio.gather(*(writer() for _ in range(clients)))
        busy1, _ = machine_ticks()
    finally:
        await pool.close()
        await setup.execute("DROP TABLE headroom_probe")
        await setup.close()
    return (busy1 - busy0) / CLOCK_TICKS / done


def median(samples: list[Sample]) -> Sample:
    """Each column's median over the rounds."""
    return Sample(
        *(statistics.median(getattr(s, name) for s in samples) for name in Sample.__annotations__)
    )


def report(provider: str, rounds: dict[str, list[Sample]], insert: float, args) -> None:
    cells = {name: median(samples) for name, samples in rounds.items()}
    direct, bare, ours = cells["direct"], cells["bare proxy"], cells["ours"]
    unmetered = cells["ours, no ledger"]
    print(
        f"\n{provider} {MODELS[provider]}, JSON, {args.clients} clients; median of "
        f"{args.rounds} alternating rounds of {args.seconds:g} s"
    )
    print(f"{'':16}{'req/s':>8}{'x direct':>10}{'busy':>8}{'cpu/call':>10}{'client':>8}{'own':>8}")
    for name, cell in cells.items():
        print(
            f"{name:16}{cell.throughput:8.0f}{cell.throughput / direct.throughput:9.2f}x"
            f"{cell.busy * 100:7.0f}%{cell.cpu_per_call * 1000:10.2f}"
            f"{cell.client_per_call * 1000:8.2f}{cell.own_per_call * 1000:8.2f}"
        )
    goal = GOAL * direct.throughput
    ceiling = max(bare.busy, unmetered.busy, ours.busy)
    allowed = ceiling * (os.cpu_count() or 1) / goal
    spent = ours.cpu_per_call - bare.cpu_per_call
    left = allowed - bare.cpu_per_call
    checks = unmetered.cpu_per_call - bare.cpu_per_call
    ledger = ours.cpu_per_call - unmetered.cpu_per_call
    ms = 1000
    print(
        f"{GOAL:g}x of direct is {goal:.0f} req/s. At the {ceiling * 100:.0f}% busy these closed "
        f"loops reach, that allows {allowed * ms:.2f} ms of machine CPU per call; the bare proxy "
        f"takes {bare.cpu_per_call * ms:.2f}, leaving {left * ms:.2f} ms for the token check, "
        f"allow-lists and metering. Ours spends {spent * ms:.2f} ms on them: "
        f"{checks * ms:.2f} on the checks (no ledger minus bare), {ledger * ms:.2f} on the "
        f"ledger (ours minus no ledger), where {(left - checks) * ms:.2f} is left for it. One "
        f"durable one-row INSERT here costs {insert * ms:.3f} ms."
    )
    floors = [name for name in cells if name.startswith("floor")]
    if floors:

        def reached(name: str) -> str:
            return f"{cells[name].throughput / direct.throughput:.2f}x"

        print(
            "A ledger that writes nothing but each call's own row reaches "
            + ", ".join(f"{reached(name)} ({name.split(', ', 1)[1]})" for name in floors)
            + f"; ours {reached('ours')}, with leases off {reached('ours, leases off')}, "
            f"no ledger {reached('ours, no ledger')}."
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--providers", default="openai,anthropic")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6, help="per cell")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--floors",
        action="store_true",
        help="also the ledger-floor twins and ours with leases off (see above)",
    )
    args = parser.parse_args(argv)
    args.providers = [p for p in args.providers.split(",") if p]
    unknown = set(args.providers) - set(MODELS)
    if unknown:
        parser.error(f"unknown provider(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with_floors = (
        "floor, row before", "floor, row after", "floor, settled row", "ours, leases off"
    )  # fmt: skip
    twins = ("ours, no ledger", *(with_floors if args.floors else ()))
    with ExitStack() as stack:
        logs = stack.enter_context(log_folder())
        direct = stack.enter_context(standin(logs, 40))
        upstream = direct.urls["openai"].removesuffix("/v1/chat/completions")
        print(f"==> starting our gateway (fresh PostgreSQL database {DATABASE}) and a bare proxy")
        targets = [
            direct,
            stack.enter_context(bare_proxy(logs, upstream)),
            *stack.enter_context(
                our_gateways(logs, upstream, args.providers, args.clients, twins=twins)
            ),
        ]
        for target in targets:
            if target.down:
                raise SystemExit(f"{target.name} did not start: {target.down}")
        print(f"machine: {describe_machine()}")
        print(f"load average at start (1, 5, 15 min): {load()}  (the machine is shared)")
        insert = uvloop.run(durable_insert_cost(args.clients, 3))
        for provider in args.providers:
            rounds: dict[str, list[Sample]] = {target.name: [] for target in targets}
            for _ in range(args.rounds):
                for target in targets:
                    sample = uvloop.run(measure(target, provider, args.clients, args.seconds))
                    rounds[target.name].append(sample)
            report(provider, rounds, insert, args)
    print(f"\nload average at end (1, 5, 15 min): {load()}")


if __name__ == "__main__":
    main()
