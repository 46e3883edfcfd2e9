"""Our gateway with its ledger taken out, for the gateway headroom benchmark. Never a
product path.

    uvicorn benchmarks.unmetered_gateway:application --loop uvloop --http httptools

The same ASGI application as production (``safer_claw.asgi``), the same token check,
header and body allow-lists, pricing, relay and answer reading, reading each agent's
settings and prices from the database as ours does, but every admission is an
in-memory ``ok`` and nothing is settled: no reservation, ledger row or run step is
written. Its distance from the bare proxy is what the checks cost; ours' distance
from it is what the ledger (durable admission, settlement) costs.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "safer_claw.settings")

from safer_claw.asgi import application  # first: it sets Django up

# isort: split
from benchmarks.twin_ledger import install
from gateway.ledger import AgentState, PgLedger, Verdict

__all__ = ["application"]


class UnmeteredLedger(PgLedger):
    """Settings and prices from the database; admission and settlement in memory."""

    async def admit(self, params: dict[str, Any]) -> Verdict:
        no_limit = 10**9
        return Verdict(
            "ok", params["agent"], None, "running", no_limit, no_limit, no_limit, no_limit,
            no_limit, no_limit, Decimal(no_limit), 0, Decimal(0),
        )  # fmt: skip

    async def settle(self, reservation, outcome, *, model: str, now) -> AgentState | None:
        return None


install(UnmeteredLedger)
