"""How a benchmark-only twin of our gateway swaps in its own ledger. Never a product path."""

from __future__ import annotations

import asyncio

from gateway import proxy
from gateway.ledger import PgLedger


def install(ledger_class: type[PgLedger]) -> None:
    """Make the proxy use one ``ledger_class`` per event loop, as it does its own."""
    ledgers: dict[asyncio.AbstractEventLoop, PgLedger] = {}

    def loop_ledger() -> PgLedger:
        loop = asyncio.get_running_loop()
        if loop not in ledgers:
            ledgers[loop] = ledger_class()
        return ledgers[loop]

    proxy.ledger = loop_ledger
