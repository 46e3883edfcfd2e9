"""Our gateway with the cheapest ledger that still keeps a row per call, for the gateway
headroom benchmark. Never a product path: it checks no cap.

    LEDGER_FLOOR=before|after|settled uvicorn benchmarks.ledger_floor_gateway:application ...

The same ASGI application as production (``safer_claw.asgi``) and the same ledger
machinery (``PgLedger``: its pools, batchers, group commit and flush), but every
admission is an ``ok`` without a verdict, a lock or a counter, and a call's whole ledger
is its own row, written through the same batches as ours. No agent or run row is
touched and no run step is written. It bounds what a design that keeps a row per call
can reach on this machine:

- ``before``: the pending row is inserted on admission and on disk before the call is
  forwarded, as ours does (one round trip on the client's path), then updated on
  settlement (flushed as ours is);
- ``after``: the same two writes, but the call is forwarded at once and its pending row
  written meanwhile, off the client's path;
- ``settled``: no pending row; one complete row is inserted on settlement (flushed as
  ours is). What a call would cost if its admission came from a budget leased to the
  worker beforehand, whose durable reservation covers the calls made under it (the
  lease's own statements aside).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "safer_claw.settings")

from safer_claw.asgi import application  # first: it sets Django up

# isort: split
from benchmarks.twin_ledger import install
from gateway import ledger_sql
from gateway.ledger import AgentState, PgLedger, Verdict, batch_params

__all__ = ["application"]

MODE = os.environ.get("LEDGER_FLOOR", "before")
if MODE not in ("before", "after", "settled"):
    raise SystemExit(f"LEDGER_FLOOR must be 'before', 'after' or 'settled', not {MODE!r}")

COLUMNS = {**ledger_sql.ADMIT_COLUMNS, "agent": "uuid"}
# A complete row at settlement: the admission's columns and the settlement's.
SETTLED_COLUMNS = {
    **{name: COLUMNS[name] for name in ("agent", "provider", "streamed", "dropped")},
    **ledger_sql.SETTLE_COLUMNS,
    "reserved_tokens": "bigint", "reserved_output": "bigint", "reserved_cost": "numeric",
    "reserved_tools": "bigint", "created_at": "timestamptz",
}  # fmt: skip


def _statements() -> dict[str, str]:
    values = (
        ledger_sql._per_call(
            ledger_sql.RECORD_VALUES.format(agent="q.agent", run="NULL", json="::jsonb"),
            COLUMNS,
            "q",
        )
        .replace("%(no_tools)s", "'[]'")
        .replace("%(no)s", "false")
        .replace("%(calls)s", "1")
    )
    settled = ledger_sql._per_call(
        ledger_sql.RECORD_SET.format(json="::jsonb"), ledger_sql.SETTLE_COLUMNS, "q"
    )
    complete = """q.record, q.agent, NULL, q.provider, q.model, q.status, q.http_status,
        q.streamed, q.request_id, q.input, q.cached, q.created, q.output, q.tool_calls,
        q.tool_names::jsonb, q.dropped::jsonb, q.reserved_tokens, q.reserved_output,
        q.reserved_cost, q.reserved_tools, q.charged, q.cost, q.latency, q.created_at, %(now)s,
        1"""
    texts = {
        "floor_insert_settled": f"""INSERT INTO {ledger_sql.RECORD} ({ledger_sql.RECORD_COLUMNS})
            SELECT {complete} FROM ({ledger_sql.batch_rows(SETTLED_COLUMNS)}) AS q""",
        "floor_admit": f"""INSERT INTO {ledger_sql.RECORD} ({ledger_sql.RECORD_COLUMNS})
            SELECT {values} FROM ({ledger_sql.batch_rows(COLUMNS)}) AS q""",
        "floor_settle": f"""UPDATE {ledger_sql.RECORD} AS u SET {settled}
            FROM ({ledger_sql.batch_rows(ledger_sql.SETTLE_COLUMNS)}) AS q
            WHERE u.id = q.record AND u.status = 'pending'""",
    }
    return {name: re.sub(r"\s+", " ", text).strip() for name, text in texts.items()}


# PgLedger runs statements by name from this table: add ours beside the product's.
ledger_sql.POSTGRESQL_RAW.update(
    {name: ledger_sql.raw(text) for name, text in _statements().items()}
)


def _ok(params: dict[str, Any]) -> Verdict:
    no_limit = 10**9
    return Verdict(
        "ok", params["agent"], None, "running", no_limit, no_limit, no_limit, no_limit,
        no_limit, no_limit, Decimal(no_limit), 0, Decimal(0),
    )  # fmt: skip


class FloorLedger(PgLedger):
    """Each call's own row, written as ``MODE`` says; nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self._writing: dict[Any, asyncio.Task] = {}  # MODE "after": rows being inserted
        self._admitted: dict[Any, dict[str, Any]] = {}  # MODE "settled": admissions unwritten

    async def admit(self, params: dict[str, Any]) -> Verdict | None:
        if MODE == "before":
            return await super().admit(params)
        if MODE == "settled":
            self._unsettled.add(params["record"])
            self._admitted[params["record"]] = params
            return _ok(params)
        self._unsettled.add(params["record"])
        task = asyncio.get_running_loop().create_task(
            self._admissions.submit(params["agent"], params)
        )
        self._writing[params["record"]] = task
        return _ok(params)

    async def _admit_batch(self, calls: Sequence[dict[str, Any]]) -> list[Verdict | None]:
        await self._rows("floor_admit", batch_params(calls, COLUMNS), durable=True)
        return [_ok(call) for call in calls]

    async def settle(self, reservation, outcome, *, model: str, now) -> AgentState | None:
        writing = self._writing.pop(reservation.record_id, None)
        if writing is not None:
            await writing  # its row must exist to be settled
        return await super().settle(reservation, outcome, model=model, now=now)

    async def _settle_batch(self, settlements: Sequence[tuple[Any, dict[str, Any]]]) -> list:
        if MODE == "settled":
            rows = [self._complete_row(params) for _, params in settlements]
            await self._rows("floor_insert_settled", batch_params(rows, SETTLED_COLUMNS))
        else:
            params = batch_params([each for _, each in settlements], ledger_sql.SETTLE_COLUMNS)
            await self._rows("floor_settle", params)
        await self._settled_durably()
        return [None] * len(settlements)

    def _complete_row(self, settled: dict[str, Any]) -> dict[str, Any]:
        admitted = self._admitted.pop(settled["record"])
        return {
            **settled,
            "agent": admitted["agent"],
            "provider": admitted["provider"],
            "streamed": admitted["streamed"],
            "dropped": admitted["dropped"],
            "reserved_tokens": admitted["tokens"],
            "reserved_cost": admitted["cost"],
            "reserved_tools": admitted["tools"],
            "reserved_output": admitted["output"],
            "created_at": admitted["now"],
        }


install(FloorLedger)
