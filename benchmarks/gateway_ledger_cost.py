"""What the gateway's ledger statements cost the machine per call, by batch size.

    ./dev bench gateway_ledger_cost [--calls 2000] [--batches 1,2,4,8,16]

``gateway_headroom`` shows that the ledger (durable admission and settlement) is
most of what our gateway adds under load. This takes it apart, with no HTTP in the
way: on a fresh PostgreSQL database with one running agent per call of a batch (each
in an active run, as the runtime's calls are), it runs the gateway's own statements
(``gateway.ledger.PgLedger``, asyncpg, as a worker runs them) ``--calls`` times for
each batch size, one phase after another: the admissions (one statement per batch,
committed to disk), the settlements of those calls (one per batch, committed
without waiting for the disk), and the flushes that make them durable (one per
batch). Each phase reports the CPU per call of the database's backends and of this
process (a worker's share: building the parameters, asyncpg's encoding and decoding).

Baselines from the same run: a ``SELECT 1`` round trip, and a one-row INSERT in its own
transaction committed to disk, one call at a time. PostgreSQL's CPU is read from
/proc (Linux only) in clock ticks, so each phase runs long enough for them to count.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import gateway_targets as targets  # noqa: E402
from benchmarks.gateway_latency import describe_machine, load  # noqa: E402


async def cost(phase: Callable[[], Awaitable[int]]) -> tuple[float, float]:
    """(database, this process) CPU seconds per call of ``phase``, which returns its calls."""
    database0, own0 = targets.database_cpu(), targets.own_cpu()
    calls = await phase()
    return (targets.database_cpu() - database0) / calls, (targets.own_cpu() - own0) / calls


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="per phase and batch size")
    parser.add_argument("--batches", default="1,2,4,8,16")
    args = parser.parse_args(argv)
    args.batches = [int(size) for size in args.batches.split(",") if size]
    if not args.batches or min(args.batches) < 1 or args.calls < max(args.batches):
        parser.error("batch sizes must be positive, and --calls at least the largest")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    env = targets.gateway_env("http://127.0.0.1:9")  # no call goes upstream
    tokens = targets.prepare_gateway(env, ["openai"], max(args.batches))["openai"]
    os.environ.update(env, DJANGO_SETTINGS_MODULE="safer_claw.settings")
    import django

    django.setup()
    try:
        import uvloop

        rows = uvloop.run(measure(tokens, args))
    finally:
        from django.db import connections

        connections.close_all()
        targets.drop_database()
    report(rows, args)


# One phase's line: its label, its batch size (None: a baseline), and the CPU seconds per
# call of the database and of this process.
Row = tuple[str, int | None, float, float]


async def measure(tokens: list[str], args) -> list[Row]:
    from gateway import ledger as gl

    db = gl.PgLedger()
    bench = await LedgerCalls.ready(db, tokens)
    rows: list[Row] = [
        ("SELECT 1, a round trip", None, *await cost(partial(bench.select_one, args.calls))),
        ("one-row INSERT, on disk", None, *await cost(partial(bench.durable_insert, args.calls))),
    ]
    for size in args.batches:
        rounds, held = args.calls // size, []
        phases = {
            "admission": partial(bench.admit, size, rounds, held),
            "settlement": partial(bench.settle, held),  # the calls just admitted
            "flush": partial(bench.flush, size, rounds),
        }
        for phase, run in phases.items():
            rows.append((f"batch of {size}: {phase}", size, *await cost(run)))
    await db.close()
    return rows


class LedgerCalls:
    """The gateway's statements for calls of the benchmark's agents, one phase at a time;
    each phase returns how many calls it covered."""

    @classmethod
    async def ready(cls, db, tokens: list[str]) -> LedgerCalls:
        from agents.tokens import hash_token

        self = cls()
        self.db = db
        self.hashes = [hash_token(token) for token in tokens]
        self.configs = [await db.config(each) for each in self.hashes]
        self.model = targets.MODELS["openai"]
        self.price = await db.price("openai", self.model)
        return self

    async def select_one(self, calls: int) -> int:
        async with self.db.lazy_pool.acquire() as conn:
            for _ in range(calls):
                await conn.fetchval("SELECT 1")
        return calls

    async def durable_insert(self, calls: int) -> int:
        async with self.db.durable_pool.acquire() as conn:
            await conn.execute("CREATE TEMPORARY TABLE probe (id bigserial, n integer)")
            for _ in range(calls):
                await conn.execute("INSERT INTO probe (n) VALUES (1)")
            await conn.execute("DROP TABLE probe")
        return calls

    def admission(self, agent: int) -> tuple[dict, object]:
        from django.utils import timezone

        from gateway import ledger as gl
        from gateway.providers import OPENAI

        config = self.configs[agent]
        body = {"model": self.model, "messages": [{"role": "user", "content": "hi"}]}
        call = OPENAI.prepare(
            body, raw_size=80, max_tokens=config.max_tokens, allowed=config.allowed
        )
        params = gl.admit_params(
            token_hash=self.hashes[agent],
            config=config,
            call=call,
            provider="openai",
            cost=self.price.worst_cost(call),
            now=timezone.now(),
        )
        return params, call

    async def admit(self, size: int, rounds: int, held: list) -> int:
        """``rounds`` admission statements of ``size`` calls; their reservations into ``held``."""
        from gateway import ledger as gl

        for _ in range(rounds):
            calls = [self.admission(agent) for agent in range(size)]
            verdicts = await self.db._admit_batch([params for params, _ in calls])
            if any(v is None or v.code != "ok" for v in verdicts):
                raise SystemExit(f"an admission was refused: {verdicts}")
            pairs = zip(calls, verdicts, strict=True)
            held.append([gl.reservation_for(p, v, c) for (p, c), v in pairs])
        return rounds * size

    async def settle(self, held: list) -> int:
        """Settle each batch of ``held`` reservations in one statement, as the provider
        answered with its usage."""
        from django.utils import timezone

        from gateway import ledger as gl
        from gateway.models import UsageStatus
        from gateway.providers import Usage

        usage = Usage(input_tokens=24, output_tokens=40, final=True)
        cost = self.price.cost(usage)
        outcome = gl.Outcome(status=UsageStatus.OK, http_status=200, usage=usage, cost=cost)
        for reservations in held:
            now = timezone.now()
            await self.db._charge(
                [
                    (each, gl.settle_params(each, outcome, model=self.model, now=now))
                    for each in reservations
                ]
            )  # the statement alone: the flush is its own phase
        return sum(len(each) for each in held)

    async def flush(self, size: int, rounds: int) -> int:
        for _ in range(rounds):
            await self.db._rows("flush", {}, durable=True)
        return rounds * size


def report(rows: list[Row], args) -> None:
    print(f"machine: {describe_machine()}")
    print(f"load average (1, 5, 15 min): {load()}  (the machine is shared)")
    print(
        f"{args.calls} calls per phase; CPU per call in ms: PostgreSQL's backends, this "
        "process (a worker's side), both; x: both against the durable one-row INSERT"
    )
    baseline = sum(rows[1][2:])
    print(f"{'':34}{'database':>10}{'worker':>10}{'both':>10}{'x':>8}")
    totals: dict[int, float] = {}
    for label, size, database, worker in rows:
        both = database + worker
        print(
            f"{label:34}{database * 1000:10.3f}{worker * 1000:10.3f}{both * 1000:10.3f}"
            f"{both / baseline:7.1f}x"
        )
        if size is not None:
            totals[size] = totals.get(size, 0) + both
    for size, both in totals.items():
        print(
            f"batch of {size}, all three: {both * 1000:.3f} ms per call, "
            f"{both / baseline:.1f}x the INSERT"
        )


if __name__ == "__main__":
    main()
