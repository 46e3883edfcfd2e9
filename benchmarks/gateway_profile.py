"""Where the gateway's added latency goes: each database step of a call, timed alone.

    ./dev bench gateway_profile

Sets up the same production-like gateway database as gateway_latency (PostgreSQL,
Redis, one running agent, prices) and times, in this process, p50 over N calls:
the token lookup, the requests-per-minute count, the reservation, and the
settlement, against a bare ``SELECT 1`` round trip as the baseline.
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
            profile(tokens["openai"], count)
        finally:
            from django.db import connections

            connections.close_all()
            targets.drop_database()


def profile(token: str, count: int) -> None:
    from django.db import connection

    from gateway import metering
    from gateway.models import UsageStatus
    from gateway.providers import OPENAI, Usage

    body = {"model": targets.MODELS["openai"], "messages": [{"role": "user", "content": "hi"}]}
    agent = metering._agent_for_token(token)
    call = OPENAI.prepare(dict(body), raw_size=80, max_tokens_limit=agent.max_tokens_per_request)
    price = metering.price_for("openai", call.model)
    usage = Usage(input_tokens=24, output_tokens=40, seen=True)

    def reserve_and_settle() -> None:
        admission = metering._reserve(agent, OPENAI, call, price, None, "key")
        started = time.perf_counter()
        metering._settle(admission, usage, 0, UsageStatus.OK, 200, 1, "")
        settle_ms.append((time.perf_counter() - started) * 1000)

    settle_ms: list[float] = []

    def select_one() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    rows = [
        ("SELECT 1 (round trip baseline)", timed(select_one, count)),
        ("token lookup", timed(lambda: metering._agent_for_token(token), count)),
        ("requests-per-minute count (Redis)", timed(lambda: metering._check_rate(agent), count)),
        ("reserve + settle", timed(reserve_and_settle, count)),
    ]
    print(f"machine: {machine()}")
    print(f"p50 over {count} calls each, in-process, PostgreSQL + Redis on loopback\n")
    for label, value in rows:
        print(f"{label:40}{value:>8.3f} ms")
    settle = sorted(settle_ms)[len(settle_ms) // 2]
    print(f"{'  of which settle':40}{settle:>8.3f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
