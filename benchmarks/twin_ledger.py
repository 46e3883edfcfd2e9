"""How a benchmark-only twin of our gateway swaps in its own ledger. Never a product path."""

from __future__ import annotations

import asyncio

from gateway import ledger, proxy
from gateway.ledger import PgLedger


def install(ledger_class: type[PgLedger]) -> None:
    """Make the proxy use one ``ledger_class`` per event loop in place of ``PgLedger``,
    kept in the gateway's own table, so its pools are closed at shutdown as ours are.

    It replaces the proxy's ``ledger`` and leaves the name ``PgLedger`` alone: a twin
    built on another twin still reaches the real class by it."""

    def loop_ledger() -> PgLedger:
        loop = asyncio.get_running_loop()
        with ledger._ledgers_lock:
            found = ledger._ledgers.get(loop)
            if found is None:
                found = ledger._ledgers[loop] = ledger_class()
        return found

    proxy.ledger = loop_ledger
