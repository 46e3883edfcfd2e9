"""The gateway's hot-path SQL, written once: admission and settlement.

Admission decides, under the agent's row lock (and the active run's), whether a
call may go, and which limit binds if not (``VERDICT``: one CASE, the one place
every limit is checked in order). On PostgreSQL admission is ONE statement:
locking CTEs read the agent by its token and its active run (``FOR NO KEY
UPDATE`` returns the latest committed rows, so concurrent calls see each other's
reservations; it is the lock an UPDATE of the row takes, so a transaction that
only inserts a row pointing at the agent or run, such as a run's reply, does not
wait for it and cannot deadlock with it), the verdict is computed from them, and
only an ``ok`` verdict reserves on the agent and the run and opens the ledger row. Settlement is one
statement too: the ledger row (once: ``status = 'pending'``), the agent's
counters, the run's counters and the run's step. SQLite (local runs) has no
data-modifying CTEs, so there the same fragments run as steps of one IMMEDIATE
transaction. Table names come from the models; values are always parameters.
PostgreSQL also has each statement's batch form (below), for calls that arrive
together.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from agents.conversations import Run, RunStep
from agents.models import Agent, AgentToken
from gateway.models import ModelPrice, UsageRecord

AGENT = Agent._meta.db_table
TOKEN = AgentToken._meta.db_table
RUN = Run._meta.db_table
STEP = RunStep._meta.db_table
RECORD = UsageRecord._meta.db_table
PRICE = ModelPrice._meta.db_table


def _today(column: str) -> str:
    """A per-day counter as the row says, with another day's count read as zero."""
    return f"(CASE WHEN a.tokens_day = %(today)s THEN a.{column} ELSE 0 END)"


SPENT = _today("tokens_today")
CALLS = _today("tool_calls_today")
LOOSE_STEPS = _today("model_calls_outside_runs_today")
LOOSE_TOOLS = _today("tool_calls_outside_runs_today")
RATE = "(CASE WHEN a.rate_minute = %(minute)s THEN a.rate_count ELSE 0 END)"

# Every limit, in the order they bind. "_inflight" verdicts would pass but for
# calls still in flight (reservations not yet settled): the caller may retry.
# Calls outside any run get a per-UTC-day allowance with the per-run limits.
# ``a`` is the agent's row with DERIVED's columns, ``r`` its active run (or nulls).
# A lease (gateway.ledger) reserves ``calls`` calls at once and is granted only
# with room to spare: each limit is checked against ``need_*``, the lease's
# reservation times LEASE_HEADROOM, so no lease holds more than a share of what
# is left under any limit, and inside a run only if the run's deadline is after
# ``lease_end``, when no call can be drawn from it any more. For one call, ``calls``
# is 1 and ``need_*`` is what it reserves, and the verdict is the one-call verdict.
VERDICT = """CASE
 WHEN NOT (a.ai_provider = %(cfg_provider)s AND COALESCE(a.ai_api_key, '') = %(cfg_key)s
  AND a.max_tokens_per_request = %(cfg_max_tokens)s AND {tools_eq}) THEN 'stale'
 WHEN a.status <> 'running' OR NOT a.billing_active THEN 'not_running'
 WHEN a.rate + %(need_calls)s > a.max_requests_per_minute THEN 'rate'
 WHEN r.id IS NOT NULL AND r.deadline <= %(now)s THEN 'run_runtime'
 WHEN %(calls)s > 1 AND r.id IS NOT NULL AND r.deadline <= %(lease_end)s THEN 'lease_runtime'
 WHEN r.model_calls >= a.max_model_steps_per_run THEN 'run_steps'
 WHEN r.model_calls + r.reserved_model_calls + %(need_calls)s > a.max_model_steps_per_run
  THEN 'run_steps_inflight'
 WHEN %(tools)s > 0 AND r.requested_tool_calls + %(need_tools)s > a.max_tool_calls_per_run
  THEN 'run_tools'
 WHEN %(tools)s > 0
  AND r.requested_tool_calls + r.reserved_model_calls + %(need_tools)s > a.max_tool_calls_per_run
  THEN 'run_tools_inflight'
 WHEN r.id IS NULL AND a.loose_steps >= a.max_model_steps_per_run THEN 'day_steps'
 WHEN r.id IS NULL AND a.loose_steps + a.reserved_model_calls_outside_runs + %(need_calls)s
  > a.max_model_steps_per_run THEN 'day_steps_inflight'
 WHEN r.id IS NULL AND %(tools)s > 0 AND a.loose_tools + %(need_tools)s > a.max_tool_calls_per_run
  THEN 'day_run_tools'
 WHEN r.id IS NULL AND %(tools)s > 0 AND a.loose_tools + a.reserved_model_calls_outside_runs
  + %(need_tools)s > a.max_tool_calls_per_run THEN 'day_run_tools_inflight'
 WHEN %(tools)s > 0 AND a.calls + %(need_tools)s > a.max_tool_calls_per_day THEN 'day_tools'
 WHEN %(tools)s > 0
  AND a.calls + a.reserved_tool_calls + %(need_tools)s > a.max_tool_calls_per_day
  THEN 'day_tools_inflight'
 WHEN a.spent >= a.daily_token_cap THEN 'tokens_cap'
 WHEN a.spent + %(need_tokens)s > a.daily_token_cap THEN 'tokens_call'
 WHEN a.spent + a.reserved_tokens + %(need_tokens)s > a.daily_token_cap THEN 'tokens_inflight'
 WHEN a.cost_this_period >= a.monthly_cost_cap THEN 'cost_cap'
 WHEN a.cost_this_period + %(need_cost)s > a.monthly_cost_cap THEN 'cost_call'
 WHEN a.cost_this_period + a.reserved_cost + %(need_cost)s > a.monthly_cost_cap
  THEN 'cost_inflight'
 ELSE 'ok' END"""
# Today's counters as the row says them, another day's read as zero; this minute's rate.
DERIVED = f"""{SPENT} AS spent, {CALLS} AS calls, {LOOSE_STEPS} AS loose_steps,
 {LOOSE_TOOLS} AS loose_tools, {RATE} AS rate"""

# What a refusal message needs, returned with every verdict.
VERDICT_COLUMNS = f"""a.id AS agent_id, r.id AS run_id, {VERDICT} AS code, a.status,
 a.max_requests_per_minute, a.max_model_steps_per_run, a.max_tool_calls_per_run,
 a.max_runtime_seconds, a.max_tool_calls_per_day, a.daily_token_cap, a.monthly_cost_cap,
 a.spent AS spent_tokens, a.cost_this_period"""

RESERVE_SET = f"""
    rate_count = {RATE} + %(calls)s, rate_minute = %(minute)s,
    tokens_today = {SPENT}, tool_calls_today = {CALLS},
    model_calls_outside_runs_today = {LOOSE_STEPS},
    tool_calls_outside_runs_today = {LOOSE_TOOLS},
    tokens_day = %(today)s,
    reserved_tokens = a.reserved_tokens + %(tokens)s,
    reserved_cost = a.reserved_cost + %(cost)s,
    reserved_tool_calls = a.reserved_tool_calls + %(tools)s,
    reserved_model_calls_outside_runs = a.reserved_model_calls_outside_runs
        + {{outside}} * %(calls)s"""

RECORD_COLUMNS = """id, agent_id, run_id, provider, model, status, http_status, streamed,
    upstream_request_id, input_tokens, cached_input_tokens, cache_creation_input_tokens,
    output_tokens, tool_calls, tool_names, dropped_tools, reserved_tokens, reserved_output_tokens,
    reserved_cost, reserved_tool_calls, charged_reservation, cost, latency_ms, created_at,
    settled_at, reserved_calls"""
RECORD_VALUES = """%(record)s, {agent}, {run}, %(provider)s, %(model)s, 'pending', NULL,
    %(streamed)s, '', 0, 0, 0, 0, 0, %(no_tools)s{json}, %(dropped)s{json}, %(tokens)s,
    %(output)s, %(cost)s, %(tools)s, %(no)s, 0, NULL, %(now)s, NULL, %(calls)s"""

CONFIG = f"""SELECT a.id, a.ai_provider, a.ai_api_key, a.max_tokens_per_request, a.allowed_tools
    FROM {TOKEN} t JOIN {AGENT} a ON a.id = t.agent_id
    WHERE t.token_hash = %(hash)s AND t.revoked_at IS NULL"""

PRICE_ROW = f"""SELECT input_per_mtok, cached_input_per_mtok, cache_write_5m_per_mtok,
    cache_write_1h_per_mtok, output_per_mtok FROM {PRICE}
    WHERE provider = %(provider)s AND model = %(model)s"""

RECORD_SET = """status = %(status)s, http_status = %(http_status)s, input_tokens = %(input)s,
    cached_input_tokens = %(cached)s, cache_creation_input_tokens = %(created)s,
    output_tokens = %(output)s, tool_calls = %(tool_calls)s, tool_names = %(tool_names)s{json},
    cost = %(cost)s, charged_reservation = %(charged)s, latency_ms = %(latency)s,
    upstream_request_id = %(request_id)s, settled_at = %(now)s"""

SETTLE_AGENT_SET = f"""
    reserved_tokens = {{greatest}}(a.reserved_tokens - {{rec_tokens}}, 0),
    reserved_cost = {{greatest}}(a.reserved_cost - {{rec_cost}}, 0),
    reserved_tool_calls = {{greatest}}(a.reserved_tool_calls - {{rec_tools}}, 0),
    reserved_model_calls_outside_runs =
        {{greatest}}(a.reserved_model_calls_outside_runs - {{outside}}, 0),
    tokens_today = {SPENT} + %(tokens)s,
    tool_calls_today = {CALLS} + %(tool_calls)s,
    model_calls_outside_runs_today = {LOOSE_STEPS} + {{outside}},
    tool_calls_outside_runs_today = {LOOSE_TOOLS} + {{outside}} * %(tool_calls)s,
    tokens_day = %(today)s,
    cost_this_period = a.cost_this_period + %(cost)s,
    last_activity_at = %(now)s"""
SETTLE_RUN_SET = """reserved_model_calls = {greatest}(r.reserved_model_calls - 1, 0),
    model_calls = r.model_calls + 1,
    requested_tool_calls = r.requested_tool_calls + %(tool_calls)s,
    tokens = r.tokens + %(tokens)s, cost = r.cost + %(cost)s"""
AGENT_STATE = """a.status, a.tokens_day, a.tokens_today, a.daily_token_cap, a.cost_this_period,
    a.monthly_cost_cap"""
STEP_INSERT = f"INSERT INTO {STEP} (run_id, kind, name, detail, created_at) "


@dataclass(frozen=True)
class Statements:
    """One database's texts of the statements above."""

    config: str
    price: str
    admit: str  # PostgreSQL: the whole admission; SQLite: the verdict alone
    reserve_agent: str = ""
    reserve_run: str = ""
    open_record: str = ""
    settle: str = ""  # PostgreSQL: the whole settlement
    pending_record: str = ""
    settle_record: str = ""
    settle_agent: str = ""
    settle_run: str = ""
    add_step: str = ""
    agent_state: str = ""
    refused_step: str = ""
    flush: str = ""  # PostgreSQL: an empty transaction with an xid, committed durably
    admit_batch: str = ""  # PostgreSQL: admission of several calls at once
    settle_batch: str = ""  # PostgreSQL: settlement of several calls at once
    settle_lease: str = ""  # PostgreSQL: a lease's settlement, its calls' rows with it


# The columns the verdict reads: the rest of the row is never copied.
LOCKED_AGENT = ", ".join(
    f"a.{column}"
    for column in (
        "id", "ai_provider", "ai_api_key", "max_tokens_per_request", "allowed_tools", "status",
        "billing_active", "rate_minute", "rate_count", "max_requests_per_minute",
        "max_model_steps_per_run", "max_tool_calls_per_run", "max_runtime_seconds",
        "max_tool_calls_per_day", "tokens_day", "tokens_today", "tool_calls_today",
        "model_calls_outside_runs_today", "tool_calls_outside_runs_today",
        "reserved_model_calls_outside_runs", "reserved_tool_calls", "daily_token_cap",
        "reserved_tokens", "cost_this_period", "reserved_cost", "monthly_cost_cap",
    )
)  # fmt: skip
LOCKED_RUN = "r.id, r.deadline, r.model_calls, r.reserved_model_calls, r.requested_tool_calls"


# PostgreSQL runs admission and settlement for a batch of calls at once (each
# worker groups the calls that arrive while its previous statement is in flight:
# gateway.batches): the statement's fixed cost, about 200 µs of the server's CPU
# and a commit, dwarfs a row's. The calls come in as arrays, one element per call,
# unnested into ``q`` with their position ``ord``; the time is the batch's own.
# A batch holds at most one call per agent (the batcher sees to it: two calls of
# one agent in one UPDATE would count once), and locks its agents' rows in id
# order, then their runs' rows in id order, as every batch does, so two batches
# cannot deadlock.
ADMIT_COLUMNS = {
    "hash": "text", "cfg_provider": "text", "cfg_key": "text", "cfg_max_tokens": "bigint",
    "cfg_tools": "text", "tools": "bigint", "tokens": "bigint", "output": "bigint",
    "cost": "numeric", "record": "uuid", "provider": "text", "model": "text",
    "streamed": "boolean", "dropped": "text",
}  # fmt: skip
SETTLE_COLUMNS = {
    "record": "uuid", "status": "text", "http_status": "integer", "input": "bigint",
    "cached": "bigint", "created": "bigint", "output": "bigint", "tokens": "bigint",
    "tool_calls": "bigint", "tool_names": "text", "cost": "numeric", "charged": "boolean",
    "latency": "integer", "request_id": "text", "model": "text", "detail": "text",
}  # fmt: skip


def batch_rows(columns: dict[str, str]) -> str:
    """A batch's calls as rows ``q`` of ``columns`` and ``ord`` (their place, from 1).

    They come as one JSON array (``gateway.ledger.batch_params``), not as an array per
    column: binding a dozen typed arrays costs the gateway's worker several times the
    CPU of one JSON text, and PostgreSQL reads that text as fast.
    """
    spec = ", ".join(f"{name} {kind}" for name, kind in columns.items())
    return f"SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb) AS q({spec}, ord bigint)"


def _per_call(sql: str, columns: dict[str, str], alias: str) -> str:
    """``sql`` with each per-call parameter read from ``alias``'s column instead."""
    return re.sub(
        r"%\((\w+)\)s",
        lambda m: f"{alias}.{m.group(1)}" if m.group(1) in columns else m.group(0),
        sql,
    )


# PostgreSQL's texts of the fragments both forms (one call, a batch) use.
PG_OUTSIDE = "(CASE WHEN v.run_id IS NULL THEN 1 ELSE 0 END)"
PG_REC_OUTSIDE = "(CASE WHEN rec.run_id IS NULL THEN 1 ELSE 0 END)"
PG_SETTLE_AGENT_SET = SETTLE_AGENT_SET.format(
    greatest="GREATEST",
    rec_tokens="rec.reserved_tokens",
    rec_cost="rec.reserved_cost",
    rec_tools="rec.reserved_tool_calls",
    outside=PG_REC_OUTSIDE,
)
PG_SETTLE_RUN_SET = SETTLE_RUN_SET.format(greatest="GREATEST")


def _one_call(sql: str) -> str:
    """``sql`` for calls admitted one by one (a batch's): one call, its own need."""
    sql = re.sub(r"%\(need_(\w+)\)s", r"%(\1)s", sql)
    return sql.replace("%(calls)s", "1").replace("%(lease_end)s", "%(now)s")


def _postgresql_batches() -> tuple[str, str]:
    verdict = _per_call(
        _one_call(VERDICT_COLUMNS.replace("{tools_eq}", "a.allowed_tools = q.cfg_tools::jsonb")),
        ADMIT_COLUMNS,
        "q",
    )
    # Belt and braces: a second call of an agent in one batch is sent back to try again.
    verdict = verdict.replace(
        "CASE\n WHEN",
        "CASE\n WHEN row_number() OVER (PARTITION BY a.id ORDER BY q.ord) > 1 THEN 'busy'\n WHEN",
        1,
    )
    values = (
        _per_call(
            _one_call(RECORD_VALUES.format(agent="v.agent_id", run="v.run_id", json="::jsonb")),
            ADMIT_COLUMNS,
            "q",
        )
        .replace("%(no_tools)s", "'[]'")
        .replace("%(no)s", "false")
    )
    reserve = _per_call(_one_call(RESERVE_SET.replace("{outside}", PG_OUTSIDE)), ADMIT_COLUMNS, "q")
    admit = f"""
WITH q AS MATERIALIZED ({batch_rows(ADMIT_COLUMNS)}
), la AS MATERIALIZED (
    SELECT q.ord, {LOCKED_AGENT}, {DERIVED} FROM q
    JOIN {TOKEN} t ON t.token_hash = q.hash AND t.revoked_at IS NULL
    JOIN {AGENT} a ON a.id = t.agent_id
    ORDER BY a.id FOR NO KEY UPDATE OF a
), lr AS MATERIALIZED (
    SELECT r.agent_id, {LOCKED_RUN} FROM {RUN} r
    WHERE r.agent_id IN (SELECT id FROM la) AND r.status = 'active'
    ORDER BY r.id FOR NO KEY UPDATE
), v AS MATERIALIZED (
    SELECT q.ord, {verdict} FROM q JOIN la AS a ON a.ord = q.ord
    LEFT JOIN lr AS r ON r.agent_id = a.id
), reserved AS (
    UPDATE {AGENT} AS a SET {reserve}
    FROM v JOIN q ON q.ord = v.ord WHERE a.id = v.agent_id AND v.code = 'ok' RETURNING a.id
), run_reserved AS (
    UPDATE {RUN} AS r SET reserved_model_calls = r.reserved_model_calls + %(calls)s
    FROM v WHERE r.id = v.run_id AND v.code = 'ok' RETURNING r.id
), opened AS (
    INSERT INTO {RECORD} ({RECORD_COLUMNS})
    SELECT {values} FROM v JOIN q ON q.ord = v.ord WHERE v.code = 'ok'
)
SELECT * FROM v"""
    charge = _per_call(PG_SETTLE_AGENT_SET, SETTLE_COLUMNS, "rec")
    run_charge = _per_call(PG_SETTLE_RUN_SET, SETTLE_COLUMNS, "rec")
    settle = f"""
WITH q AS MATERIALIZED ({batch_rows(SETTLE_COLUMNS)}
), rec AS (
    UPDATE {RECORD} AS u SET {_per_call(RECORD_SET.format(json="::jsonb"), SETTLE_COLUMNS, "q")}
    FROM q WHERE u.id = q.record AND u.status = 'pending'
    RETURNING q.ord, u.agent_id, u.run_id, u.reserved_tokens, u.reserved_cost,
        u.reserved_tool_calls, q.tokens, q.tool_calls, q.cost, q.model, q.detail
), la AS MATERIALIZED (
    SELECT a.id FROM {AGENT} a WHERE a.id IN (SELECT agent_id FROM rec)
    ORDER BY a.id FOR NO KEY UPDATE
), charged AS (
    UPDATE {AGENT} AS a SET {charge}
    FROM rec JOIN la ON la.id = rec.agent_id WHERE a.id = rec.agent_id
    RETURNING rec.ord, {AGENT_STATE}
), lr AS MATERIALIZED (
    SELECT r.id FROM {RUN} r WHERE r.id IN (SELECT run_id FROM rec)
    ORDER BY r.id FOR NO KEY UPDATE
), run_charged AS (
    UPDATE {RUN} AS r SET {run_charge}
    FROM rec JOIN lr ON lr.id = rec.run_id WHERE r.id = rec.run_id
    RETURNING r.id, rec.model, rec.detail
), step AS (
    {STEP_INSERT} SELECT id, 'model_call', model, detail::jsonb, %(now)s FROM run_charged
)
SELECT * FROM charged"""
    return _one_call(admit), settle


# Leases (gateway.leases): a lease is admitted like a call, ``calls`` at once, and its
# pending row is the reservation. The calls drawn from it are answered, then the
# lease's settlement (SETTLE_LEASE) does all the writing in one statement: each call's
# complete row (status, usage and cost, pointing at the lease) and its run's step; the
# reservation released, the steps made counted, the requests of the rate not made given
# back (in the lease's minute) and the calls' usage charged, to the agent and the run.
# All of it only if the lease is still pending: a lease already settled (a retry) or
# swept (its worker was thought dead) writes no call after the fact. The lease's own
# row keeps only what was charged beyond its calls' rows (nothing, unless the sweeper
# charged a lease whose worker died), so the ledger's rows sum to the counters.
CALL_ROW_COLUMNS = {
    **SETTLE_COLUMNS,
    "agent": "uuid", "run": "uuid", "lease": "uuid", "provider": "text",
    "streamed": "boolean", "dropped": "text", "reserved_tokens": "bigint",
    "reserved_output": "bigint", "reserved_cost": "numeric", "reserved_tools": "bigint",
    "admitted": "timestamptz",
}  # fmt: skip
LEASE_OUTSIDE = "(CASE WHEN rec.run_id IS NULL THEN 1 ELSE 0 END)"
SETTLE_LEASE = f"""
WITH rec AS (
    UPDATE {RECORD} SET status = %(status)s, input_tokens = %(own_input)s,
        output_tokens = %(own_output)s, cost = %(own_cost)s,
        tool_calls = %(own_tool_calls)s, charged_reservation = %(charged)s, settled_at = %(now)s
    WHERE id = %(record)s AND status = 'pending'
    RETURNING agent_id, run_id, reserved_tokens, reserved_cost, reserved_tool_calls,
        reserved_calls
), q AS MATERIALIZED ({batch_rows(CALL_ROW_COLUMNS)}
), written AS (
    INSERT INTO {RECORD} ({RECORD_COLUMNS}, lease_id)
    SELECT q.record, q.agent, q.run, q.provider, q.model, q.status, q.http_status, q.streamed,
        q.request_id, q.input, q.cached, q.created, q.output, q.tool_calls, q.tool_names::jsonb,
        q.dropped::jsonb, q.reserved_tokens, q.reserved_output, q.reserved_cost,
        q.reserved_tools, q.charged, q.cost, q.latency, q.admitted, %(now)s, 1, q.lease
    FROM q WHERE EXISTS (SELECT FROM rec) ON CONFLICT (id) DO NOTHING RETURNING id
), stepped AS (
    {STEP_INSERT} SELECT q.run, 'model_call', q.model, q.detail::jsonb, %(now)s
    FROM q JOIN written ON written.id = q.record WHERE q.run IS NOT NULL
), charged AS (
    UPDATE {AGENT} AS a SET
        reserved_tokens = GREATEST(a.reserved_tokens - rec.reserved_tokens, 0),
        reserved_cost = GREATEST(a.reserved_cost - rec.reserved_cost, 0),
        reserved_tool_calls = GREATEST(a.reserved_tool_calls - rec.reserved_tool_calls, 0),
        reserved_model_calls_outside_runs = GREATEST(
            a.reserved_model_calls_outside_runs - {LEASE_OUTSIDE} * rec.reserved_calls, 0),
        rate_count = CASE WHEN a.rate_minute = %(minute)s
            THEN GREATEST(a.rate_count - %(unused)s, 0) ELSE a.rate_count END,
        tokens_today = {SPENT} + %(tokens)s,
        tool_calls_today = {CALLS} + %(tool_calls)s,
        model_calls_outside_runs_today = {LOOSE_STEPS} + {LEASE_OUTSIDE} * %(steps)s,
        tool_calls_outside_runs_today = {LOOSE_TOOLS} + {LEASE_OUTSIDE} * %(tool_calls)s,
        tokens_day = %(today)s,
        cost_this_period = a.cost_this_period + %(cost)s,
        last_activity_at = %(now)s
    FROM rec WHERE a.id = rec.agent_id RETURNING {AGENT_STATE}
), run_charged AS (
    UPDATE {RUN} AS r SET
        reserved_model_calls = GREATEST(r.reserved_model_calls - rec.reserved_calls, 0),
        model_calls = r.model_calls + %(steps)s,
        requested_tool_calls = r.requested_tool_calls + %(tool_calls)s,
        tokens = r.tokens + %(tokens)s, cost = r.cost + %(cost)s
    FROM rec WHERE r.id = rec.run_id RETURNING r.id
)
SELECT * FROM charged"""


def _postgresql() -> Statements:
    admit_batch, settle_batch = _postgresql_batches()
    verdict = VERDICT_COLUMNS.replace("{tools_eq}", "a.allowed_tools = %(cfg_tools)s::jsonb")
    values = RECORD_VALUES.format(agent="v.agent_id", run="v.run_id", json="::jsonb")
    admit = f"""
WITH la AS MATERIALIZED (
    SELECT {LOCKED_AGENT}, {DERIVED} FROM {TOKEN} t JOIN {AGENT} a ON a.id = t.agent_id
    WHERE t.token_hash = %(hash)s AND t.revoked_at IS NULL
    FOR NO KEY UPDATE OF a
), lr AS MATERIALIZED (
    SELECT {LOCKED_RUN} FROM {RUN} r WHERE r.agent_id = (SELECT id FROM la) AND r.status = 'active'
    FOR NO KEY UPDATE
), v AS MATERIALIZED (
    SELECT {verdict} FROM la AS a LEFT JOIN lr AS r ON true
), reserved AS (
    UPDATE {AGENT} AS a SET {RESERVE_SET.replace("{outside}", PG_OUTSIDE)}
    FROM v WHERE a.id = v.agent_id AND v.code = 'ok' RETURNING a.id
), run_reserved AS (
    UPDATE {RUN} AS r SET reserved_model_calls = r.reserved_model_calls + %(calls)s
    FROM v WHERE r.id = v.run_id AND v.code = 'ok' RETURNING r.id
), opened AS (
    INSERT INTO {RECORD} ({RECORD_COLUMNS}) SELECT {values} FROM v WHERE v.code = 'ok'
)
SELECT * FROM v"""
    settle = f"""
WITH rec AS (
    UPDATE {RECORD} SET {RECORD_SET.format(json="::jsonb")}
    WHERE id = %(record)s AND status = 'pending'
    RETURNING agent_id, run_id, reserved_tokens, reserved_cost, reserved_tool_calls
), charged AS (
    UPDATE {AGENT} AS a SET {PG_SETTLE_AGENT_SET}
    FROM rec WHERE a.id = rec.agent_id RETURNING {AGENT_STATE}
), run_charged AS (
    UPDATE {RUN} AS r SET {PG_SETTLE_RUN_SET}
    FROM rec WHERE r.id = rec.run_id RETURNING r.id
), step AS (
    {STEP_INSERT} SELECT id, 'model_call', %(model)s, %(detail)s::jsonb, %(now)s FROM run_charged
)
SELECT * FROM charged"""
    return Statements(
        config=CONFIG,
        price=PRICE_ROW,
        admit=admit,
        settle=settle,
        refused_step=STEP_INSERT
        + "VALUES (%(run)s, 'refused', %(model)s, %(detail)s::jsonb, %(now)s) RETURNING id",
        flush="SELECT txid_current()",
        admit_batch=admit_batch,
        settle_batch=settle_batch,
        settle_lease=SETTLE_LEASE,
    )


def _sqlite() -> Statements:
    verdict = VERDICT_COLUMNS.replace("{tools_eq}", "a.allowed_tools = %(cfg_tools)s")
    return Statements(
        config=CONFIG,
        price=PRICE_ROW,
        admit=f"""SELECT {verdict} FROM {TOKEN} t
            JOIN (SELECT a.*, {DERIVED} FROM {AGENT} a) a ON a.id = t.agent_id
            LEFT JOIN {RUN} r ON r.agent_id = a.id AND r.status = 'active'
            WHERE t.token_hash = %(hash)s AND t.revoked_at IS NULL""",
        reserve_agent=f"UPDATE {AGENT} AS a SET "
        + RESERVE_SET.replace("{outside}", "%(outside)s")
        + " WHERE a.id = %(agent)s",
        reserve_run=f"UPDATE {RUN} AS r SET "
        "reserved_model_calls = r.reserved_model_calls + %(calls)s WHERE r.id = %(run)s",
        open_record=f"INSERT INTO {RECORD} ({RECORD_COLUMNS}) VALUES ("
        + RECORD_VALUES.format(agent="%(agent)s", run="%(run)s", json="")
        + ")",
        pending_record=f"""SELECT agent_id, run_id, reserved_tokens, reserved_cost,
            reserved_tool_calls FROM {RECORD} WHERE id = %(record)s AND status = 'pending'""",
        settle_record=f"UPDATE {RECORD} SET {RECORD_SET.format(json='')} "
        "WHERE id = %(record)s AND status = 'pending'",
        settle_agent=f"UPDATE {AGENT} AS a SET "
        + SETTLE_AGENT_SET.format(
            greatest="MAX",
            rec_tokens="%(rec_tokens)s",
            rec_cost="%(rec_cost)s",
            rec_tools="%(rec_tools)s",
            outside="%(outside)s",
        )
        + " WHERE a.id = %(agent)s",
        settle_run=f"UPDATE {RUN} AS r SET {SETTLE_RUN_SET.format(greatest='MAX')} "
        "WHERE r.id = %(run)s",
        add_step=STEP_INSERT + "VALUES (%(run)s, 'model_call', %(model)s, %(detail)s, %(now)s)",
        agent_state=f"SELECT {AGENT_STATE} FROM {AGENT} AS a WHERE a.id = %(agent)s",
        refused_step=STEP_INSERT + "VALUES (%(run)s, 'refused', %(model)s, %(detail)s, %(now)s)",
    )


def _compact(statements: Statements) -> Statements:
    # One line each: readable in PostgreSQL's logs and pg_stat_activity.
    return Statements(
        *(re.sub(r"\s+", " ", text).strip() for text in dataclasses.astuple(statements))
    )


@dataclass(frozen=True)
class Raw:
    """A statement in PostgreSQL's own ``$n`` form, as asyncpg sends it (the proxy's
    ledger): the names of its parameters in order."""

    text: str
    names: tuple[str, ...]

    def args(self, params: dict) -> list:
        return [params[name] for name in self.names]


def raw(sql: str) -> Raw:
    names: list[str] = []

    def number(match: re.Match) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return Raw(re.sub(r"%\((\w+)\)s", number, sql), tuple(names))


POSTGRESQL = _compact(_postgresql())
SQLITE = _compact(_sqlite())
POSTGRESQL_RAW = {name: raw(text) for name, text in dataclasses.asdict(POSTGRESQL).items() if text}
