"""The gateway's hot-path SQL: reserve and settle in as few round trips as possible.

The ORM builds these statements anew on every call, which costs more than the
database takes to run them. Here they are written once. On PostgreSQL each of
reserve and settle is ONE statement (data-modifying CTEs), atomic on its own;
SQLite (local runs) has no such CTEs, so there the same pieces run in a
transaction. The arithmetic is the same on both, in the shared fragments.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from decimal import Decimal

from django.db import connection, transaction

from agents.models import Agent
from gateway.models import UsageRecord

AGENT = Agent._meta.db_table
RECORD = UsageRecord._meta.db_table

# Tokens spent today as the row says, with yesterday's count read as zero.
SPENT_TODAY = "(CASE WHEN tokens_day = %(today)s THEN tokens_today ELSE 0 END)"
CALLS_TODAY = "(CASE WHEN tokens_day = %(today)s THEN tool_calls_today ELSE 0 END)"

RESERVE_SET = f"""
    tokens_today = {SPENT_TODAY},
    tool_calls_today = {CALLS_TODAY},
    tokens_day = %(today)s,
    reserved_tokens = reserved_tokens + %(tokens)s,
    reserved_cost = reserved_cost + %(cost)s
"""
# Under the row's lock: spent + everything in flight + this call must fit.
RESERVE_WHERE = f"""
    id = %(agent)s AND status = 'running'
    AND {SPENT_TODAY} + reserved_tokens + %(tokens)s <= daily_token_cap
    AND cost_this_period + reserved_cost + %(cost)s <= monthly_cost_cap
"""
RECORD_COLUMNS = """
    id, agent_id, provider, model, status, http_status, streamed, upstream_request_id,
    input_tokens, cached_input_tokens, cache_creation_input_tokens, output_tokens,
    tool_calls, reserved_tokens, reserved_cost, cost, latency_ms, run_id, created_at,
    settled_at
"""
RECORD_VALUES = """
    %(record)s, %(agent)s, %(provider)s, %(model)s, 'pending', NULL, %(streamed)s, '',
    0, 0, 0, 0, 0, %(tokens)s, %(cost)s, 0, NULL, %(run)s, %(now)s, NULL
"""

SETTLE_RECORD_SET = """
    status = %(status)s, http_status = %(http_status)s, input_tokens = %(input)s,
    cached_input_tokens = %(cached)s, cache_creation_input_tokens = %(created)s,
    output_tokens = %(output)s, tool_calls = %(tool_calls)s, cost = %(cost)s,
    latency_ms = %(latency)s, upstream_request_id = %(request_id)s, settled_at = %(now)s
"""


def _agent_set(release_tokens: str, release_cost: str, greatest: str) -> str:
    return f"""
    reserved_tokens = {greatest}(reserved_tokens - {release_tokens}, 0),
    reserved_cost = {greatest}(reserved_cost - {release_cost}, 0),
    tokens_today = {SPENT_TODAY} + %(tokens)s,
    tool_calls_today = {CALLS_TODAY} + %(tool_calls)s,
    tokens_day = %(today)s,
    cost_this_period = cost_this_period + %(cost)s,
    last_activity_at = %(now)s
"""


AGENT_STATE = (
    "status, tokens_day, tokens_today, daily_token_cap, cost_this_period, monthly_cost_cap"
)

RESERVE_PG = f"""
WITH reserved AS (
    UPDATE {AGENT} SET {RESERVE_SET} WHERE {RESERVE_WHERE} RETURNING id
)
INSERT INTO {RECORD} ({RECORD_COLUMNS}) SELECT {RECORD_VALUES} FROM reserved RETURNING id
"""

SETTLE_PG = f"""
WITH settled AS (
    UPDATE {RECORD} SET {SETTLE_RECORD_SET}
    WHERE id = %(record)s AND status = 'pending' RETURNING reserved_tokens, reserved_cost
), charged AS (
    UPDATE {AGENT} SET {
    _agent_set(
        "COALESCE((SELECT reserved_tokens FROM settled), 0)",
        "COALESCE((SELECT reserved_cost FROM settled), 0)",
        "GREATEST",
    )
}
    WHERE id = %(agent)s RETURNING {AGENT_STATE}
)
SELECT {AGENT_STATE}, (SELECT count(*) FROM settled) FROM charged
"""


@dataclass(frozen=True)
class AgentState:
    """The agent's cap state right after a settlement."""

    status: str
    tokens_day: dt.date | None
    tokens_today: int
    daily_token_cap: int
    cost_this_period: Decimal
    monthly_cost_cap: Decimal
    released: bool  # False when the sweeper had released the reservation already


def _db(value: uuid.UUID) -> object:
    return Agent._meta.pk.get_db_prep_value(value, connection)


def _when(now: dt.datetime) -> dict:
    # In the backend's own formats (SQLite compares dates and times as text).
    ops = connection.ops
    return {
        "now": ops.adapt_datetimefield_value(now),
        "today": ops.adapt_datefield_value(now.date()),
    }


def _money(value: Decimal) -> object:
    return connection.ops.adapt_decimalfield_value(value, 14, 6)


def reserve(*, agent_id, record_id, provider, model, streamed, tokens, cost, run_id, now) -> bool:
    """Reserve ``tokens``/``cost`` and open the ledger row; False if a cap (or state) refuses."""
    params = {
        **_when(now),
        "agent": _db(agent_id),
        "record": _db(record_id),
        "tokens": tokens,
        "cost": _money(cost),
        "provider": provider,
        "model": model,
        "streamed": streamed,
        "run": run_id,
    }
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(RESERVE_PG, params)
            return cursor.fetchone() is not None
        with transaction.atomic():
            cursor.execute(f"UPDATE {AGENT} SET {RESERVE_SET} WHERE {RESERVE_WHERE}", params)
            if cursor.rowcount != 1:
                return False
            cursor.execute(
                f"INSERT INTO {RECORD} ({RECORD_COLUMNS}) VALUES ({RECORD_VALUES})", params
            )
            return True


def settle(
    *,
    agent_id,
    record_id,
    reserved_tokens,
    reserved_cost,
    status,
    http_status,
    usage,
    tool_calls,
    cost,
    latency_ms,
    request_id,
    now,
) -> AgentState:
    """Write the call's usage, charge the agent and release its reservation, once."""
    params = {
        **_when(now),
        "agent": _db(agent_id),
        "record": _db(record_id),
        "status": status,
        "http_status": http_status,
        "input": usage.input_tokens,
        "cached": usage.cached_input_tokens,
        "created": usage.cache_creation_input_tokens,
        "output": usage.output_tokens,
        "tool_calls": tool_calls,
        "cost": _money(cost),
        "latency": latency_ms,
        "request_id": request_id[:128],
        "tokens": usage.total_tokens,
        "reserved_tokens": reserved_tokens,
        "reserved_cost": _money(reserved_cost),
    }
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(SETTLE_PG, params)
            row = cursor.fetchone()
        else:
            row = _settle_in_steps(cursor, params)
    if not row[-1]:
        _charge_released(record_id, params, now)
    return AgentState(*row[:-1], released=bool(row[-1]))


def _settle_in_steps(cursor, params: dict) -> tuple:
    with transaction.atomic():
        cursor.execute(
            f"UPDATE {RECORD} SET {SETTLE_RECORD_SET} WHERE id = %(record)s AND status = 'pending'",
            params,
        )
        released = cursor.rowcount
        release = ("%(reserved_tokens)s", "%(reserved_cost)s") if released else ("0", "0")
        cursor.execute(
            f"UPDATE {AGENT} SET {_agent_set(*release, 'MAX')} WHERE id = %(agent)s", params
        )
        cursor.execute(f"SELECT {AGENT_STATE} FROM {AGENT} WHERE id = %(agent)s", params)
        state = cursor.fetchone()
    day = state[1]
    if isinstance(day, str):
        day = dt.date.fromisoformat(day)
    return (
        state[0],
        day,
        state[2],
        state[3],
        Decimal(str(state[4])),
        Decimal(str(state[5])),
        released,
    )


def _charge_released(record_id, params: dict, now: dt.datetime) -> None:
    # The sweeper released this reservation already: the usage is still written
    # (spend is never lost), and nothing is released a second time.
    UsageRecord.objects.filter(pk=record_id).update(
        input_tokens=params["input"],
        cached_input_tokens=params["cached"],
        cache_creation_input_tokens=params["created"],
        output_tokens=params["output"],
        tool_calls=params["tool_calls"],
        cost=Decimal(str(params["cost"])),
        settled_at=now,
    )
