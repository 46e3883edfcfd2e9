"""A sketch of the leased ledger, for the gateway headroom benchmark. Never a product path.

    LEASE_CALLS=32 uvicorn benchmarks.leased_gateway:application ...

Our gateway (``safer_claw.asgi``) with admission from a lease: the first call of an
agent takes, through the real admission statement (the verdict, every cap, the run),
a reservation for ``LEASE_CALLS`` calls of its size, held as one pending ledger row.
Later calls of that agent are admitted from what is left of it in memory, with no
database round trip; each writes one complete row of its own after the answer
(batched). After ``LEASE_SECONDS``, once its calls are answered, the lease is settled
through the real settlement statement with their summed usage, releasing the rest.
A call the lease cannot cover takes a new lease, or is admitted alone as ours does.

A sketch, to measure the design before building it: the lease counts as one model
step and one request of the rate (the design counts them all), nothing tells a worker
that an agent was stopped or edited while its lease lasts, and a lease left by a dead
worker is charged whole by the sweeper (the rows of its calls not yet written are lost).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

# The floor twin in its "settled" mode writes each drawn call's complete row; importing
# it sets Django up and registers its statements (it installs its own ledger, replaced
# by ours below).
os.environ.setdefault("LEDGER_FLOOR", "settled")

from benchmarks import ledger_floor_gateway as floor

# isort: split
from django.utils import timezone

from benchmarks.twin_ledger import install
from gateway.ledger import (
    AgentState,
    Outcome,
    PgLedger,
    Reservation,
    Verdict,
    reservation_for,
    settle_params,
)
from gateway.providers import Usage

application = floor.application
__all__ = ["application"]

LEASE_CALLS = int(os.environ.get("LEASE_CALLS", "32"))
LEASE_SECONDS = float(os.environ.get("LEASE_SECONDS", "0.25"))


@dataclass
class Lease:
    params: dict[str, Any]  # its admission's: its row is the lease's pending row
    verdict: Verdict
    tokens: int  # what is left to reserve
    cost: Decimal
    tools: int
    calls: int
    usage: Usage = field(default_factory=Usage)
    spent: Decimal = Decimal(0)
    tool_calls: int = 0
    in_flight: int = 0
    closing: bool = False
    settled: bool = False

    def covers(self, call: dict[str, Any]) -> bool:
        return (
            not self.closing
            and self.calls >= 1
            and self.tokens >= call["tokens"]
            and self.cost >= call["cost"]
            and self.tools >= call["tools"]
            and call["cfg_key"] == self.params["cfg_key"]
            and call["cfg_tools"] == self.params["cfg_tools"]
            and call["cfg_max_tokens"] == self.params["cfg_max_tokens"]
        )

    def draw(self, call: dict[str, Any]) -> None:
        self.tokens -= call["tokens"]
        self.cost -= call["cost"]
        self.tools -= call["tools"]
        self.calls -= 1
        self.in_flight += 1

    def answered(self, reservation: Reservation, settled: dict[str, Any]) -> None:
        """A call's answer: its usage added, what it did not use given back."""
        self.in_flight -= 1
        self.tokens += reservation.tokens - settled["tokens"]
        self.cost += reservation.cost - settled["cost"]
        self.tools += reservation.tool_calls - settled["tool_calls"]
        self.usage = Usage(
            input_tokens=self.usage.input_tokens + settled["input"],
            output_tokens=self.usage.output_tokens + settled["output"],
            cached_input_tokens=self.usage.cached_input_tokens + settled["cached"],
            cache_creation_input_tokens=self.usage.cache_creation_input_tokens + settled["created"],
        )
        self.spent += settled["cost"]
        self.tool_calls += settled["tool_calls"]


class LeasedLedger(floor.FloorLedger):
    def __init__(self) -> None:
        super().__init__()
        self._leases: dict[uuid.UUID, Lease] = {}  # by agent
        self._drawn: dict[uuid.UUID, Lease] = {}  # by call record
        self._closing: set[asyncio.Task] = set()  # leases being settled

    async def _admit_batch(self, calls):
        return await PgLedger._admit_batch(self, calls)  # the real admission, for leases

    async def admit(self, params: dict[str, Any]) -> Verdict | None:
        lease = self._leases.get(params["agent"])
        if lease is None or not lease.covers(params):
            if lease is not None:
                self._close(lease)
            lease = await self._take(params)
            if lease is None:  # alone, exactly as ours
                return await PgLedger.admit(self, params)
        lease.draw(params)
        self._drawn[params["record"]] = lease
        self._admitted[params["record"]] = params
        self._unsettled.add(params["record"])
        return lease.verdict

    async def _take(self, params: dict[str, Any]) -> Lease | None:
        wanted = {
            **params,
            "record": uuid.uuid4(),
            "tokens": params["tokens"] * LEASE_CALLS,
            "output": params["output"] * LEASE_CALLS,
            "cost": params["cost"] * LEASE_CALLS,
            "tools": params["tools"] * LEASE_CALLS,
        }
        verdict = await PgLedger.admit(self, wanted)
        if verdict is None or verdict.code != "ok":
            return None
        lease = Lease(
            wanted, verdict, wanted["tokens"], wanted["cost"], wanted["tools"], LEASE_CALLS
        )
        self._leases[params["agent"]] = lease
        asyncio.get_running_loop().call_later(LEASE_SECONDS, self._close, lease)
        return lease

    def _close(self, lease: Lease) -> None:
        lease.closing = True
        if self._leases.get(lease.params["agent"]) is lease:
            del self._leases[lease.params["agent"]]
        if lease.in_flight == 0 and not lease.settled:
            lease.settled = True
            task = asyncio.get_running_loop().create_task(self._settle_lease(lease))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _settle_lease(self, lease: Lease) -> None:
        outcome = Outcome(
            status="ok", http_status=200, usage=lease.usage, cost=lease.spent,
            tool_calls=lease.tool_calls,
        )  # fmt: skip
        await PgLedger.settle(
            self,
            reservation_for(lease.params, lease.verdict),
            outcome,
            model=lease.params["model"],
            now=timezone.now(),
        )

    async def settle(self, reservation, outcome, *, model: str, now) -> AgentState | None:
        lease = self._drawn.pop(reservation.record_id, None)
        if lease is None:
            return await PgLedger.settle(self, reservation, outcome, model=model, now=now)
        params = settle_params(reservation, outcome, model=model, now=now)
        lease.answered(reservation, params)
        self._unsettled.discard(reservation.record_id)
        if lease.closing and lease.in_flight == 0 and not lease.settled:
            self._close(lease)
        # The call's own row, keyed by itself: a batch takes many of one agent.
        await self._settlements.submit(reservation.record_id, (reservation, params))
        return None

    async def _settle_batch(self, settlements) -> list:
        # Calls drawn from a lease are in _admitted until their rows are written; the
        # rest are leases and calls admitted alone, settled by the real statement.
        rows = [each for each in settlements if each[1]["record"] in self._admitted]
        leases = [each for each in settlements if each[1]["record"] not in self._admitted]
        if rows:
            await floor.FloorLedger._settle_batch(self, rows)  # MODE "settled": inserts
        states = await PgLedger._settle_batch(self, leases) if leases else []
        found = dict(zip((id(each) for each in leases), states, strict=True))
        return [found.get(id(each)) for each in settlements]


install(LeasedLedger)
