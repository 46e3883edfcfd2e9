"""How a benchmark-only twin of our gateway swaps in its own ledger. Never a product path."""

from __future__ import annotations

from gateway import ledger
from gateway.ledger import PgLedger


def install(ledger_class: type[PgLedger]) -> None:
    """Make ``ledger_class`` what the gateway makes for each event loop on PostgreSQL, in
    place of ``PgLedger``: kept and closed at shutdown as ours is."""
    ledger.PgLedger = ledger_class
