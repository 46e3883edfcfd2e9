"""Leases: the calls of an agent that calls often, admitted from one reservation for many.

Why: a call admitted alone costs a durable database round trip before it is
forwarded and a settlement after it. With many calls of one agent in flight that
bounds the gateway's throughput (``./dev bench gateway_headroom --floors``).

So a gateway worker that sees an agent call often (LEASE_AFTER_CALLS calls within
GATEWAY_LEASE_SECONDS, one after another or at once) takes a lease instead: an
admission through the one admission statement, with every limit in it, for
GATEWAY_LEASE_CALLS calls the size of the call that asked. It is granted only with
room to spare: LEASE_HEADROOM times its reservation must fit under every limit, so
near a limit calls are admitted one by one, as exactly as ever; inside a run, only
if the run's deadline falls after the lease's last possible draw. Its reservation is
its pending ledger row, on disk before any call drawn from it is forwarded.

For GATEWAY_LEASE_SECONDS from the moment it was asked for, calls draw from it in
memory: each takes its own worst case from what is left, so the lease never covers
more than it reserved. Once the lease's time is up, or it cannot
cover the next call, and every call drawn from it is answered, one statement settles
it: it writes each call's complete ledger row (and its run's step), charges their
summed usage and releases the rest, durably (the settlements' group flush).

While the agent keeps calling, its next lease is asked for before the open one runs
out (RENEW_WHEN_LEFT of its life or its calls left), so that its calls do not wait
for a lease's admission every GATEWAY_LEASE_SECONDS; once granted, it replaces the
open one, which is settled as any other. So at most two of an agent's leases are
drawn from or asked for in a worker at once (others may wait for a slow call to be
answered before they settle), and each is granted only with room for four times its
reservation beside every other pending one.

What the lease's life bounds:

* A kill (``agents.kill_switch``) returns GATEWAY_LEASE_SECONDS after it revoked the
  agent's tokens at the earliest, so no call is admitted from a lease after a kill
  returns.
* A stop, a pause or an edit of the agent's limits or settings binds every call
  admitted GATEWAY_LEASE_SECONDS after it; so does the end of a run (calls drawn
  until then are its steps).
* The agent's counters lag by what a lease's calls used until it settles.
* A worker that dies holding a lease leaves it pending: the sweeper charges its
  whole reservation (``metering.charge_unsettled_calls``), which may be more than
  its calls used, never less.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings

if TYPE_CHECKING:
    from gateway.ledger import Reservation, Verdict

# A lease is asked for once this many calls of the agent came to this worker within
# GATEWAY_LEASE_SECONDS, this one included: an agent calling less often (any agent
# waiting on a real model) has each call admitted and charged alone, at once.
LEASE_AFTER_CALLS = 4
# A lease is granted only if this many times its reservation fits under every limit.
LEASE_HEADROOM = 4
# After a lease is refused (a limit near, a run active), the agent's calls are
# admitted one by one for this long before a lease is asked for again.
LEASE_PAUSE_SECONDS = 1.0
# An open lease is renewed (its successor asked for while it still serves) once less
# than this share of its life or of its calls is left.
RENEW_WHEN_LEFT = 0.25
# What a call must share with the lease it draws from: the token, and the agent's
# settings as the lease's admission checked them.
SAME_AS_LEASE = ("hash", "provider", "cfg_provider", "cfg_key", "cfg_max_tokens", "cfg_tools")


def leasing() -> bool:
    return settings.GATEWAY_LEASE_CALLS > 1


def lease_params(params: dict[str, Any], *, calls: int) -> dict[str, Any]:
    """The admission parameters of a lease for ``calls`` calls the size of ``params``'."""
    # Its run's deadline must fall after its last possible draw (with a second to spare
    # for the time between this call's clock reading and the ask).
    life = dt.timedelta(seconds=settings.GATEWAY_LEASE_SECONDS + 1)
    lease = {
        **params,
        "lease_end": params["now"] + life,
        "record": uuid.uuid4(),
        "dropped": "[]",
        "calls": calls,
        "tokens": params["tokens"] * calls,
        "output": params["output"] * calls,
        "cost": params["cost"] * calls,
        "tools": params["tools"] * calls,
    }
    for name in ("calls", "tokens", "cost", "tools"):
        lease[f"need_{name}"] = lease[name] * LEASE_HEADROOM
    return lease


@dataclass(eq=False)
class Lease:
    """A lease being drawn from (or waiting for its calls' rows) in one worker."""

    admitted: dict[str, Any]  # its admission's parameters: its row is ``record``
    verdict: Verdict
    draws_until: float  # on the event loop's clock
    calls: int  # left to draw: calls, and their worst cases
    tokens: int
    cost: Decimal
    tools: int
    drawn: int = 0
    unanswered: int = 0  # drawn calls not answered yet
    rows: list[dict[str, Any]] = field(default_factory=list)  # answered calls' rows
    used_tokens: int = 0
    used_cost: Decimal = Decimal(0)
    used_tool_calls: int = 0
    open: bool = True
    settling: bool = False

    @classmethod
    def granted(cls, admitted: dict[str, Any], verdict: Verdict, draws_until: float) -> Lease:
        return cls(
            admitted,
            verdict,
            draws_until,
            calls=admitted["calls"],
            tokens=admitted["tokens"],
            cost=admitted["cost"],
            tools=admitted["tools"],
        )

    @property
    def record_id(self) -> uuid.UUID:
        return self.admitted["record"]

    @property
    def agent_id(self) -> uuid.UUID:
        return self.verdict.agent_id

    def covers(self, params: dict[str, Any], now: float) -> bool:
        return (
            self.open
            and now < self.draws_until
            and self.calls >= 1
            and self.tokens >= params["tokens"]
            and self.cost >= params["cost"]
            and self.tools >= params["tools"]
            and all(params[name] == self.admitted[name] for name in SAME_AS_LEASE)
        )

    def running_out(self, now: float) -> bool:
        life_left = (self.draws_until - now) / settings.GATEWAY_LEASE_SECONDS
        return min(life_left, self.calls / self.admitted["calls"]) < RENEW_WHEN_LEFT

    def draw(self, params: dict[str, Any]) -> None:
        self.calls -= 1
        self.tokens -= params["tokens"]
        self.cost -= params["cost"]
        self.tools -= params["tools"]
        self.drawn += 1
        self.unanswered += 1

    def answered(
        self, reservation: Reservation, charged: dict[str, Any], row: dict[str, Any]
    ) -> None:
        """A drawn call is answered (its complete row ``row`` is written with the lease's
        settlement): its charge counts, the rest of its worst case may be drawn again."""
        self.unanswered -= 1
        self.rows.append(row)
        self.tokens += reservation.tokens - charged["tokens"]
        self.cost += reservation.cost - charged["cost"]
        self.tools += reservation.tool_calls - charged["tool_calls"]
        self.used_tokens += charged["tokens"]
        self.used_cost += charged["cost"]
        self.used_tool_calls += charged["tool_calls"]

    @property
    def done(self) -> bool:
        """Closed, and every call drawn from it answered: it can be settled."""
        return not self.open and self.unanswered == 0


def call_row(
    admitted: dict[str, Any], lease: Lease, reservation: Reservation, charged: dict[str, Any]
) -> dict[str, Any]:
    """A drawn call's complete ledger row (``ledger_sql.CALL_ROW_COLUMNS``): its admission
    ``admitted``, its settlement ``charged``."""
    return {
        **charged,
        "lease": lease.record_id,
        "provider": admitted["provider"],
        "streamed": admitted["streamed"],
        "dropped": admitted["dropped"],
        "reserved_tokens": reservation.tokens,
        "reserved_output": reservation.output_tokens,
        "reserved_cost": reservation.cost,
        "reserved_tools": reservation.tool_calls,
        "admitted": admitted["now"],
    }


def settlement(lease: Lease, now) -> dict[str, Any]:
    """A lease's settlement (``ledger_sql.SETTLE_LEASE``) by the worker that drew from it:
    its calls' usage charged, nothing of its own."""
    return settlement_params(
        lease.record_id,
        status="lease",
        minute=lease.admitted["minute"],
        unused=lease.admitted["calls"] - lease.drawn,
        steps=lease.drawn,
        tokens=lease.used_tokens,
        cost=lease.used_cost,
        tool_calls=lease.used_tool_calls,
        now=now,
    )


def settlement_params(
    record_id: uuid.UUID,
    *,
    status: str,
    minute: int,
    unused: int,
    steps: int,
    tokens: int,
    cost: Decimal,
    tool_calls: int,
    now,
    own_input: int = 0,
    own_output: int = 0,
    own_cost: Decimal = Decimal(0),
    own_tool_calls: int = 0,
) -> dict[str, Any]:
    """``tokens``, ``cost`` and ``tool_calls`` are what the settlement charges: the
    lease's calls' rows, and the lease's own (``own_*``) if any. The calls' rows
    themselves go in ``batch`` (``ledger.batch_json``), which the worker that drew them
    sets; the sweeper has none."""
    return {
        "record": record_id,
        "batch": "[]",
        "status": status,
        "own_input": own_input,
        "own_output": own_output,
        "own_cost": own_cost,
        "own_tool_calls": own_tool_calls,
        "charged": status != "lease",
        "minute": minute,
        "unused": unused,
        "steps": steps,
        "tokens": tokens,
        "cost": cost,
        "tool_calls": tool_calls,
        "now": now,
        "today": now.date(),
    }
