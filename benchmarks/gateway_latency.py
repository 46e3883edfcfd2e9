"""Latency and throughput our metering gateway adds to a model call, against LiteLLM's proxy.

    ./dev bench gateway_latency [--providers openai,anthropic] [--sequential 300]
                                [--clients 16] [--per-client 100] [--rounds 3]
                                [--targets direct,ours,litellm]
    (or: make bench-gateway)

In one run, the same upstream stand-in (``benchmarks/upstream_standin.py``: the test fake's
wire format under uvicorn) is called with the same JSON body
(a) directly, (b) through our gateway (``/gateway/<provider>/...``, production settings on
PostgreSQL and Redis, a running agent with a token), (c) through LiteLLM's proxy (its own
virtualenv, no database). For each provider, streaming and not, sequentially and with N
concurrent clients (those cells in alternating rounds, the median round of each target
kept), it prints p50/p99 latency, what each proxy adds over the direct call
(for streams: time to first byte and total), throughput, and ours/LiteLLM ratios.

A target that fails (not started, or every warm-up call refused) is reported with its
reason and the others are still measured; errors during measurement are counted per cell.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.deploy_latency import machine, percentile  # noqa: E402
from benchmarks.gateway_targets import (  # noqa: E402
    DATABASE,
    GATEWAY_WORKERS,
    LITELLM_VERSION,
    MODELS,
    Target,
    litellm_proxy,
    log_folder,
    our_gateway,
    standin,
)

STREAM_END = {"openai": b"data: [DONE]", "anthropic": b"event: message_stop"}


@dataclass
class Cell:
    """One target's calls for one provider, stream mode and concurrency."""

    ttfb: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0
    cpu: float | None = None  # CPU seconds of the target's own processes while measured
    skipped: str = ""

    @property
    def throughput(self) -> float:
        return len(self.total) / self.wall if self.wall else 0.0

    @property
    def cpu_per_call(self) -> str:
        if self.cpu is None or not self.total:
            return "-"
        return ms(self.cpu / len(self.total))


def request_body(provider: str, stream: bool) -> bytes:
    body: dict = {
        "model": MODELS[provider],
        "messages": [{"role": "user", "content": "Say hello in forty words."}],
        "max_tokens": 64,
    }
    if stream:
        body["stream"] = True
        if provider == "openai":
            body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


async def call(
    client: httpx.AsyncClient,
    target: Target,
    provider: str,
    stream: bool,
    body: bytes,
    caller: int = 0,
) -> tuple[float, float] | str:
    """One call: (time to first body byte, total) in seconds, or what went wrong."""
    callers = target.headers[provider]
    headers = {**callers[caller % len(callers)], "Content-Type": "application/json"}
    started = time.perf_counter()
    first = 0.0
    received = b""
    try:
        async with client.stream("POST", target.urls[provider], content=body, headers=headers) as r:
            async for chunk in r.aiter_bytes():
                first = first or time.perf_counter()
                received = (received + chunk)[-4096:] if stream else received + chunk
            ended = time.perf_counter()
    except httpx.HTTPError as exc:
        return type(exc).__name__
    if r.status_code != 200:
        return f"HTTP {r.status_code}: {received[:120].decode(errors='replace')}"
    complete = STREAM_END[provider] in received if stream else b'"usage"' in received
    if not complete:
        return "response ended without its usage or end marker"
    return first - started, ended - started


async def run_cell(
    target: Target, provider: str, stream: bool, clients: int, calls_each: int, seconds: float
) -> Cell:
    """``clients`` closed-loop clients, ``calls_each`` calls each or until ``seconds`` pass."""
    cell = Cell()
    body = request_body(provider, stream)
    # A client (and connection) per worker: a shared pool's lock would be measured too.
    pool = [httpx.AsyncClient(timeout=30) for _ in range(clients)]
    try:
        # One uncounted call each, so connections are open before the clock starts.
        await asyncio.gather(
            *(call(client, target, provider, stream, body, i) for i, client in enumerate(pool))
        )
        deadline = time.perf_counter() + seconds

        async def worker(client: httpx.AsyncClient, caller: int) -> None:
            for _ in range(calls_each):
                if time.perf_counter() > deadline:
                    return
                outcome = await call(client, target, provider, stream, body, caller)
                if isinstance(outcome, str):
                    cell.errors[outcome] += 1
                else:
                    cell.ttfb.append(outcome[0])
                    cell.total.append(outcome[1])

        cpu_before = target.cpu() if target.cpu else None
        started = time.perf_counter()
        await asyncio.gather(*(worker(client, i) for i, client in enumerate(pool)))
        cell.wall = time.perf_counter() - started
        if cpu_before is not None:
            cell.cpu = target.cpu() - cpu_before
    finally:
        await asyncio.gather(*(client.aclose() for client in pool))
    return cell


async def measure(
    targets: list[Target], provider: str, stream: bool, args: argparse.Namespace
) -> dict[str, dict[str, Cell]]:
    """Per concurrency label, per target name: the cell."""
    results: dict[str, dict[str, Cell]] = {"sequential": {}, f"{args.clients} clients": {}}
    for target in targets:
        down = target.down or ("" if provider in target.urls else "provider not configured")
        if not down:
            warm = await run_cell(target, provider, stream, 1, args.warmup, args.cell_seconds)
            if not warm.total:
                down = f"every warm-up call failed: {warm.errors.most_common(1)[0][0]}"
        if down:
            for label in results:
                results[label][target.name] = Cell(skipped=down)
            continue
        results["sequential"][target.name] = await run_cell(
            target, provider, stream, 1, args.sequential, args.cell_seconds
        )
    # Concurrent cells in alternating rounds, each target's median round kept: one short
    # cell per target would rank them by the shared machine's weather as much as by speed.
    live = [target for target in targets if target.name in results["sequential"]]
    rounds: dict[str, list[Cell]] = {target.name: [] for target in live}
    for _ in range(args.rounds):
        for target in live:
            rounds[target.name].append(
                await run_cell(
                    target, provider, stream, args.clients, args.per_client, args.cell_seconds
                )
            )
    for name, cells in rounds.items():
        results[f"{args.clients} clients"][name] = median_cell(cells)
    return results


def median_cell(cells: list[Cell]) -> Cell:
    """The round with the median throughput (the lower middle of an even count), with
    every round's errors: a failure in another round is still reported."""
    ranked = sorted(cells, key=lambda cell: cell.throughput)
    kept = ranked[(len(ranked) - 1) // 2]
    kept.errors = sum((cell.errors for cell in cells), Counter())
    return kept


# --- report ---------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if ours > 0 and theirs > 0 else "n/a"


def stats(samples: list[float], base: list[float]) -> list[float]:
    """p50, p99, and what they add over the baseline's p50, p99."""
    p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
    if not base:
        return [p50, p99, float("nan"), float("nan")]
    return [p50, p99, p50 - percentile(base, 0.5), p99 - percentile(base, 0.99)]


def print_section(title: str, stream: bool, results: dict[str, dict[str, Cell]]) -> None:
    print(f"\n{title}")
    metrics = ("ttfb", "total") if stream else ("total",)
    heads = [
        f"{name}{' ' + m if stream else ''}"
        for m in metrics
        for name in ("p50", "p99", "+p50", "+p99")
    ]
    print(
        f"{'':12}{'':9}"
        + "".join(f"{h:>11}" for h in heads)
        + f"{'req/s':>9}{'calls':>7}{'errors':>8}{'cpu/call':>10}"
    )
    for label, cells in results.items():
        direct = cells.get("direct", Cell())
        for name, cell in cells.items():
            row = f"{label if name == next(iter(cells)) else '':12}{name:9}"
            if cell.skipped:
                print(f"{row}unavailable: {' '.join(cell.skipped.split())[:160]}")
                continue
            if not cell.total:
                print(f"{row}no successful call; errors: {dict(cell.errors.most_common(3))}")
                continue
            values = []
            for metric in metrics:
                values += stats(getattr(cell, metric), getattr(direct, metric))
            shown = [
                "-" if name == "direct" and i % 4 >= 2 else ms(v) for i, v in enumerate(values)
            ]
            print(
                row
                + "".join(f"{v:>11}" for v in shown)
                + f"{cell.throughput:>9.0f}{len(cell.total):>7}{sum(cell.errors.values()):>8}"
                + f"{cell.cpu_per_call:>10}"
            )
            for error, count in cell.errors.most_common(2):
                print(f"{'':21}{count} x {error[:120]}")
        print_ratios(metrics, cells)


def print_ratios(metrics: tuple[str, ...], cells: dict[str, Cell]) -> None:
    ours, theirs, direct = cells.get("ours"), cells.get("litellm"), cells.get("direct")
    if not (ours and direct and ours.total and direct.total):
        return
    if theirs and theirs.total:
        parts = []
        for metric in metrics:
            mine = stats(getattr(ours, metric), getattr(direct, metric))
            other = stats(getattr(theirs, metric), getattr(direct, metric))
            label = f"{metric} " if len(metrics) > 1 else ""
            parts.append(
                f"added {label}p50 {ratio(mine[2], other[2])}, p99 {ratio(mine[3], other[3])}"
            )
        parts.append(f"throughput {ratio(ours.throughput, theirs.throughput)}")
        print(f"{'':12}ours/LiteLLM: " + "; ".join(parts))
    print(f"{'':12}ours/direct: throughput {ratio(ours.throughput, direct.throughput)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--providers", default="openai,anthropic")
    parser.add_argument("--targets", default="direct,ours,litellm")
    parser.add_argument("--sequential", type=int, default=300, help="calls, one at a time")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--per-client", type=int, default=100, help="calls per client")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds of the concurrent cells"
    )
    parser.add_argument("--warmup", type=int, default=20, help="uncounted calls per cell")
    parser.add_argument(
        "--cell-seconds", type=float, default=10, help="time limit per cell (keeps the run short)"
    )
    parser.add_argument("--reply-words", type=int, default=40, help="words in each reply")
    args = parser.parse_args(argv)
    args.providers = [p for p in args.providers.split(",") if p]
    args.targets = [t for t in args.targets.split(",") if t]
    unknown = set(args.providers) - set(MODELS)
    if unknown:
        parser.error(f"unknown provider(s): {', '.join(sorted(unknown))}")
    return args


def load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def describe_machine() -> str:
    try:
        return machine()
    except OSError as exc:  # no docker binary: the line still tells the rest
        return f"(incomplete: {exc})"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.monotonic()
    with ExitStack() as stack:
        logs = stack.enter_context(log_folder())
        direct = stack.enter_context(standin(logs, args.reply_words))
        upstream = direct.urls["openai"].removesuffix("/v1/chat/completions")
        targets = [direct]
        if "ours" in args.targets:
            print(
                f"==> starting our gateway (fresh PostgreSQL database {DATABASE}, "
                f"{args.clients} agents per provider)"
            )
            gateway = our_gateway(logs, upstream, args.providers, args.clients)
            targets.append(stack.enter_context(gateway))
        if "litellm" in args.targets:
            print("==> starting LiteLLM's proxy")
            targets.append(stack.enter_context(litellm_proxy(logs, upstream)))
        print(f"machine: {describe_machine()}")
        print(f"load average at start (1, 5, 15 min): {load()}  (the machine is shared)")
        print(
            f"upstream stand-in: uvicorn (uvloop, httptools), {args.reply_words}-word replies; "
            f"ours: safer_claw.asgi under uvicorn ({GATEWAY_WORKERS} workers: one per core, "
            "uvloop, httptools, DEBUG off, PostgreSQL; metering, caps, allow-lists, a run, "
            "durable admission and settlement; each client is its own agent, as each agent's "
            f"loop is one client); LiteLLM {LITELLM_VERSION} proxy ({GATEWAY_WORKERS} workers, "
            "no database)"
        )
        print(
            f"per cell: {args.warmup} warm-up calls, then {args.sequential} sequential calls, "
            f"or {args.clients} clients x {args.per_client} calls, within {args.cell_seconds:g} s"
            f" (concurrent cells: {args.rounds} alternating rounds, each target's median round "
            "by throughput, with the errors of all its rounds); times in ms; +p50/+p99: added "
            "over the direct call's p50/p99; "
            "cpu/call: CPU of the target's own processes per call (direct: the stand-in; "
            "ours: its workers and their PostgreSQL backends; LiteLLM: its workers), steadier "
            "than times when the machine is shared"
        )
        for provider in args.providers:
            for stream in (False, True):
                results = uvloop.run(measure(targets, provider, stream, args))
                kind = "streaming (ttfb: first body byte)" if stream else "non-streaming"
                print_section(f"{provider} {MODELS[provider]}, {kind}", stream, results)
    print(f"\nload average at end (1, 5, 15 min): {load()}")
    print(f"total run time: {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
