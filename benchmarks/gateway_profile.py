"""Where the gateway's added latency goes: each database step of a call, timed alone.

    ./dev bench gateway_profile

Sets up the same production-like gateway database as gateway_latency (PostgreSQL,
one running agent, prices) and times, in this process on the event loop as the
gateway runs them (asyncpg), p50 over N calls: the token lookup
(before the body is read), the admission (one statement: verdict, rate count,
reservation, ledger row), and the settlement (one statement, after the answer),
against a bare ``SELECT 1`` round trip as the baseline (admission commits to disk, as it
must before the call is forwarded; settlement commits without waiting for the disk, and
its flush is timed with it).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import gateway_targets as targets  # noqa: E402
from benchmarks.deploy_latency import machine, percentile  # noqa: E402


def timed(fn: Callable[[], object], count: int) -> float:
    fn()  # warm up
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return percentile(samples, 0.5) * 1000


def main(count: int = 300) -> None:
    with targets.log_folder() as logs, contextlib.ExitStack() as stack:
        upstream = stack.enter_context(targets.standin(logs, 40))
        env = targets.gateway_env(upstream.urls["openai"].rsplit("/v1/", 1)[0])
        tokens = targets.prepare_gateway(env, ["openai"])
        os.environ.update(env, DJANGO_SETTINGS_MODULE="safer_claw.settings")
        import django

        django.setup()
        try:
            profile(tokens["openai"][0], count)
        finally:
            from django.db import connections

            connections.close_all()
            targets.drop_database()


def profile(token: str, count: int) -> None:

    import uvloop
    from django.utils import timezone

    from agents.tokens import hash_token
    from gateway import ledger as gl
    from gateway.models import UsageStatus
    from gateway.providers import OPENAI, Usage

    async def run() -> list[tuple[str, float]]:
        db = gl.ledger()
        token_hash = hash_token(token)
        config = await db.config(token_hash)
        body = {"model": targets.MODELS["openai"], "messages": [{"role": "user", "content": "hi"}]}
        call = OPENAI.prepare(
            dict(body), raw_size=80, max_tokens=config.max_tokens, allowed=config.allowed
        )
        price = await db.price("openai", call.model)
        cost = price.worst_cost(call)
        usage = Usage(input_tokens=24, output_tokens=40, final=True)
        settle_ms: list[float] = []
        reservations: list = []

        async def timed_async(step, n: int) -> float:
            await step()
            samples = []
            for _ in range(n):
                started = time.perf_counter()
                await step()
                samples.append(time.perf_counter() - started)
            return percentile(samples, 0.5) * 1000

        async def admit() -> None:
            params = gl.admit_params(
                token_hash=token_hash,
                config=config,
                call=call,
                provider="openai",
                cost=cost,
                now=timezone.now(),
            )
            verdict = await db.admit(params)
            reservations.append(gl.reservation_for(params, verdict, call))

        async def settle() -> None:
            reservation = reservations.pop()
            outcome = gl.Outcome(
                status=UsageStatus.OK, http_status=200, usage=usage, cost=price.cost(usage)
            )
            started = time.perf_counter()
            await db.settle(reservation, outcome, model=call.model, now=timezone.now())
            settle_ms.append(time.perf_counter() - started)

        async def admit_and_settle() -> None:
            await admit()
            await settle()

        async def select_one() -> None:
            async with db.lazy_pool.acquire() as conn:  # open: db.config ran above
                await conn.fetchval("SELECT 1")

        rows = [
            ("SELECT 1 (round trip baseline)", await timed_async(select_one, count)),
            ("token lookup", await timed_async(lambda: db.config(token_hash), count)),
            ("admission (one statement)", await timed_async(admit_and_settle, count)),
        ]
        rows[-1] = (rows[-1][0], rows[-1][1] - percentile(settle_ms, 0.5) * 1000)
        rows.append(("settlement (after the answer)", percentile(settle_ms, 0.5) * 1000))
        await gl.close_loop_ledger()
        return rows

    rows = uvloop.run(run())
    print(f"machine: {machine()}")
    print(f"p50 over {count} calls each, in-process on the event loop, PostgreSQL on loopback\n")
    for label, value in rows:
        print(f"{label:40}{value:>8.3f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
