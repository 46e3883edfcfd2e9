"""Running the gateway's statements (gateway.ledger_sql): on the event loop, or in a thread.

On PostgreSQL the proxy runs them with asyncpg from a small pool per event
loop: no thread hop, one round trip each, calls that arrive together batched
into one statement (gateway.batches). Anywhere else (SQLite
for local runs) and for synchronous callers (the sweeper, tests) they run
through Django's connection; async callers then hop to a thread (``in_db``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import logging
import threading
import uuid
import weakref
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import asyncpg
import orjson
import psycopg
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, connections, transaction
from django.utils import timezone

from agents.models import Agent
from gateway import leases, ledger_sql
from gateway.batches import Batcher
from gateway.leases import Lease
from gateway.metering import Price, at_cap, pause_if_at_cap
from gateway.providers import Call, Usage, tool_key

logger = logging.getLogger(__name__)

# How long a call waits for a database connection (or for connecting) before it is
# answered 503.
POOL_TIMEOUT_SECONDS = 5.0
# How long a settlement may wait for the settlements of calls still in flight, to
# share their statement (off the client's path; the reservation is held meanwhile).
SETTLE_LINGER_SECONDS = 0.003
# A settlement the database was away for is tried again after these waits (about
# two minutes in all, as long as a restart takes), then left to the sweeper.
SETTLE_RETRY_WAITS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
# PostgreSQL restarting, unreachable or unusable, as each way of reaching it says so:
# asyncpg on the event loop (a refused or dropped connection, a server shutting down or
# starting up, no connection free in time; a connection refused its database or its
# credentials, or the server out of connections, memory or disk), psycopg's and Django's
# in the threads (SQLite, sync callers), whose OperationalError covers the same. Nothing
# else is read as an outage: the client gets a 503 to retry, the log one line naming it.
OUTAGE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InsufficientResourcesError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    OperationalError,
    InterfaceError,
)


@dataclass(frozen=True)
class AgentConfig:
    """What shapes a request before admission: read by token, re-checked in admission."""

    agent_id: uuid.UUID
    provider: str
    sealed_key: str
    max_tokens: int
    allowed_tools: Any  # as stored, handed back to the admission's freshness check
    allowed: frozenset[str]  # tool_key spellings

    @functools.cached_property
    def provider_key(self) -> str:
        # Opened once per config, which the proxy keeps for CONFIG_TTL_SECONDS: the
        # key is in this process's memory for the call anyway.
        field_ = Agent._meta.get_field("ai_api_key")
        return field_.open_for_pk(self.agent_id, self.sealed_key) if self.sealed_key else ""


@dataclass(frozen=True)
class Verdict:
    code: str
    agent_id: uuid.UUID
    run_id: uuid.UUID | None
    status: str
    max_requests_per_minute: int
    max_model_steps_per_run: int
    max_tool_calls_per_run: int
    max_runtime_seconds: int
    max_tool_calls_per_day: int
    daily_token_cap: int
    monthly_cost_cap: Decimal
    spent_tokens: int
    cost_this_period: Decimal


@dataclass(frozen=True)
class Reservation:
    """What an admitted call holds until it settles."""

    record_id: uuid.UUID
    agent_id: uuid.UUID
    run_id: uuid.UUID | None
    tokens: int
    output_tokens: int
    cost: Decimal
    tool_calls: int
    dropped_tools: list[str] = field(default_factory=list)

    @classmethod
    def of_record(cls, record) -> Reservation:
        return cls(
            record_id=record.pk,
            agent_id=record.agent_id,
            run_id=record.run_id,
            tokens=record.reserved_tokens,
            output_tokens=record.reserved_output_tokens,
            cost=record.reserved_cost,
            tool_calls=record.reserved_tool_calls,
            dropped_tools=list(record.dropped_tools or []),
        )


@dataclass(frozen=True)
class Outcome:
    """How a call ended, to be charged: the provider's usage, or the whole reservation."""

    status: str
    http_status: int | None
    usage: Usage = field(default_factory=Usage)
    cost: Decimal = Decimal(0)
    tool_names: list[str] = field(default_factory=list)  # what the model asked for
    tool_calls: int = 0  # what reached the client, counted against the limits
    full: bool = False  # no usage from the provider: charge the reservation
    latency_ms: int | None = None
    request_id: str = ""

    @classmethod
    def full_reservation(cls, status: str, *, http_status: int | None, **rest: Any) -> Outcome:
        return cls(status=status, http_status=http_status, full=True, **rest)


@dataclass(frozen=True)
class AgentState:
    """The agent's cap state right after a settlement."""

    agent_id: uuid.UUID
    status: str
    tokens_day: dt.date | None
    tokens_today: int
    daily_token_cap: int
    cost_this_period: Decimal
    monthly_cost_cap: Decimal


# --- parameters -------------------------------------------------------------------------


def config_from_row(row: tuple) -> AgentConfig:
    pk, provider, sealed, max_tokens, tools = row
    allowed = json.loads(tools) if isinstance(tools, str) else (tools or [])
    return AgentConfig(
        agent_id=pk if isinstance(pk, uuid.UUID) else uuid.UUID(pk),
        provider=provider,
        sealed_key=sealed or "",
        max_tokens=max_tokens,
        allowed_tools=tools,
        allowed=frozenset(tool_key(name) for name in allowed if isinstance(name, str)),
    )


def price_from_row(row: tuple | None) -> Price | None:
    if row is None:
        return None
    money = [None if value is None else Decimal(str(value)) for value in row]
    return Price(*money)


def admit_params(
    *,
    token_hash: str,
    config: AgentConfig,
    call: Call,
    provider: str,
    cost: Decimal,
    now: dt.datetime,
) -> dict[str, Any]:
    tools = config.allowed_tools
    return {
        "agent": config.agent_id,  # a batch holds one call per agent
        "hash": token_hash,
        "cfg_provider": config.provider,
        "cfg_key": config.sealed_key,
        "cfg_max_tokens": config.max_tokens,
        "cfg_tools": tools if isinstance(tools, str) else json.dumps(tools),
        "minute": int(now.timestamp() // 60),
        "now": now,
        "today": now.date(),
        "tools": call.reserved_tool_calls,
        "tokens": call.worst_case_tokens,
        "output": call.max_output_tokens,
        "cost": cost,
        "record": uuid.uuid4(),
        "provider": provider,
        "model": call.model,
        "streamed": call.stream,
        "no_tools": "[]",
        "dropped": json.dumps(call.dropped_tools),
        "no": False,
        "calls": 1,
        "need_calls": 1,
        "need_tools": call.reserved_tool_calls,
        "need_tokens": call.worst_case_tokens,
        "need_cost": cost,
        "lease_end": now,
    }


def verdict_from_row(row: tuple) -> Verdict:
    values = list(row)
    for index in (0, 1):
        if values[index] is not None and not isinstance(values[index], uuid.UUID):
            values[index] = uuid.UUID(values[index])
    values[10] = Decimal(str(values[10]))  # monthly_cost_cap
    values[12] = Decimal(str(values[12]))  # cost_this_period
    agent_id, run_id, code, *rest = values
    return Verdict(code, agent_id, run_id, *rest)


def reservation_for(
    params: dict[str, Any], verdict: Verdict, call: Call | None = None
) -> Reservation:
    """What the admitted call (its ``admit_params``) holds; ``call`` for the tools it
    dropped, recorded at settlement."""
    return Reservation(
        record_id=params["record"],
        agent_id=verdict.agent_id,
        run_id=verdict.run_id,
        tokens=params["tokens"],
        output_tokens=params["output"],
        cost=params["cost"],
        tool_calls=params["tools"],
        dropped_tools=call.dropped_tools if call else [],
    )


def settle_params(
    reservation: Reservation, outcome: Outcome, *, model: str, now: dt.datetime
) -> dict[str, Any]:
    usage, cost, tool_calls = outcome.usage, outcome.cost, outcome.tool_calls
    if outcome.full:
        usage = Usage(
            input_tokens=reservation.tokens - reservation.output_tokens,
            output_tokens=reservation.output_tokens,
        )
        cost, tool_calls = reservation.cost, reservation.tool_calls
    detail = {
        "model": model,
        "status": outcome.status,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "cost": str(cost),
        "charged_reservation": outcome.full,
        "latency_ms": outcome.latency_ms,
        "tools_requested": outcome.tool_names,
        "tools_dropped": reservation.dropped_tools,
    }
    return {
        "record": reservation.record_id,
        "agent": reservation.agent_id,
        "run": reservation.run_id,
        "status": outcome.status,
        "http_status": outcome.http_status,
        "input": usage.input_tokens,
        "cached": usage.cached_input_tokens,
        "created": usage.cache_creation_input_tokens,
        "output": usage.output_tokens,
        "tokens": usage.total_tokens,
        "tool_calls": tool_calls,
        "tool_names": json.dumps(outcome.tool_names),
        "cost": cost,
        "charged": outcome.full,
        "latency": outcome.latency_ms,
        "request_id": outcome.request_id[:128],
        "model": model,
        "detail": json.dumps(detail),
        "now": now,
        "today": now.date(),
    }


def state_from_row(agent_id: uuid.UUID, row: tuple | None) -> AgentState | None:
    if row is None:
        return None
    status, day, tokens, cap, cost, money = row
    if isinstance(day, str):
        day = dt.date.fromisoformat(day)
    return AgentState(agent_id, status, day, tokens, cap, Decimal(str(cost)), Decimal(str(money)))


def refusal_params(run_id: uuid.UUID, model: str, detail: dict, now: dt.datetime) -> dict:
    return {"run": run_id, "model": model, "detail": json.dumps(detail), "now": now}


def batch_params(calls: Sequence[dict[str, Any]], columns: dict[str, str]) -> dict[str, Any]:
    """One PostgreSQL batch statement's parameters: its calls' ``columns`` and places as
    one JSON array (``ledger_sql.batch_rows``), and the batch's own time."""
    now = timezone.now()
    batch = batch_json(calls, columns)
    return {"batch": batch, "now": now, "today": now.date(), "minute": int(now.timestamp() // 60)}


def batch_json(calls: Sequence[dict[str, Any]], columns: dict[str, str]) -> str:
    """``calls``' ``columns`` and places as ``ledger_sql.batch_rows`` reads them."""
    rows = [
        {"ord": place, **{name: call[name] for name in columns}}
        for place, call in enumerate(calls, 1)
    ]
    return orjson.dumps(rows, default=_as_text).decode()


def _as_text(value: object) -> str:
    """A Decimal as its exact text (PostgreSQL reads a JSON string into a numeric column
    as that text), and asyncpg's UUID (which orjson does not take for uuid.UUID); any
    other type orjson cannot write is a mistake."""
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} in a ledger batch")


def refuses_agent(verdict: Verdict | None) -> bool:
    """Whether ``verdict`` refused the agent itself (its token revoked, the agent stopped,
    its settings changed), not just this call: its open lease must serve no more calls."""
    return verdict is None or verdict.code in ("not_running", "stale")


def verdicts_from_rows(rows: list[tuple], count: int) -> list[Verdict | None]:
    """Each call's verdict by its place in the batch (None: its token is unknown or revoked)."""
    verdicts: list[Verdict | None] = [None] * count
    for ord_, *row in rows:
        verdicts[ord_ - 1] = verdict_from_row(row)
    return verdicts


def states_from_rows(
    rows: list[tuple], reservations: Sequence[Reservation]
) -> list[AgentState | None]:
    """Each settlement's agent state by its place in the batch (None: settled already)."""
    states: list[AgentState | None] = [None] * len(reservations)
    for ord_, *row in rows:
        states[ord_ - 1] = state_from_row(reservations[ord_ - 1].agent_id, row)
    return states


# --- through Django's connection (SQLite, and synchronous callers) ------------------------


def _for_sqlite(params: dict[str, Any]) -> dict[str, Any]:
    ops = connection.ops
    adapted = {}
    for key, value in params.items():
        if isinstance(value, uuid.UUID):
            value = value.hex
        elif isinstance(value, dt.datetime):
            value = ops.adapt_datetimefield_value(value)
        elif isinstance(value, dt.date):
            value = ops.adapt_datefield_value(value)
        elif isinstance(value, Decimal):
            value = str(value)
        adapted[key] = value
    return adapted


def _statements() -> ledger_sql.Statements:
    return ledger_sql.POSTGRESQL if connection.vendor == "postgresql" else ledger_sql.SQLITE


def _params(params: dict[str, Any]) -> dict[str, Any]:
    return params if connection.vendor == "postgresql" else _for_sqlite(params)


def config_sync(token_hash: str) -> AgentConfig | None:
    with connection.cursor() as cursor:
        cursor.execute(_statements().config, {"hash": token_hash})
        row = cursor.fetchone()
    return config_from_row(row) if row else None


def price_sync(provider: str, model: str) -> Price | None:
    with connection.cursor() as cursor:
        cursor.execute(_statements().price, {"provider": provider, "model": model})
        return price_from_row(cursor.fetchone())


def admit_sync(params: dict[str, Any]) -> Verdict | None:
    sql = _statements()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(sql.admit, params)
            row = cursor.fetchone()
            return verdict_from_row(row) if row else None
        with transaction.atomic():  # IMMEDIATE on SQLite: the write lock, then the verdict
            cursor.execute(sql.admit, _for_sqlite(params))
            row = cursor.fetchone()
            if row is None:
                return None
            verdict = verdict_from_row(row)
            if verdict.code == "ok":
                steps = _for_sqlite(
                    {
                        **params,
                        "agent": verdict.agent_id,
                        "run": verdict.run_id,
                        "outside": 0 if verdict.run_id else 1,
                    }
                )
                cursor.execute(sql.reserve_agent, steps)
                if verdict.run_id:
                    cursor.execute(sql.reserve_run, steps)
                cursor.execute(sql.open_record, steps)
            return verdict


def settle_sync(
    reservation: Reservation, outcome: Outcome, *, model: str, now: dt.datetime
) -> AgentState | None:
    """Charge the call once; None if it was settled already (by the proxy or the sweeper)."""
    params = settle_params(reservation, outcome, model=model, now=now)
    sql = _statements()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(sql.settle, params)
            return state_from_row(reservation.agent_id, cursor.fetchone())
        params = _for_sqlite(params)
        with transaction.atomic():
            cursor.execute(sql.pending_record, params)
            row = cursor.fetchone()
            if row is None:
                return None
            agent, run, tokens, cost, tools = row
            steps = {
                **params,
                "agent": agent,
                "run": run,
                "rec_tokens": tokens,
                "rec_cost": cost,
                "rec_tools": tools,
                "outside": 0 if run else 1,
            }
            cursor.execute(sql.settle_record, steps)
            cursor.execute(sql.settle_agent, steps)
            if run:
                cursor.execute(sql.settle_run, steps)
                cursor.execute(sql.add_step, steps)
            cursor.execute(sql.agent_state, steps)
            return state_from_row(reservation.agent_id, cursor.fetchone())


async def settle_until_taken(settle: Callable[[], Awaitable[AgentState | None]], what: str) -> None:
    """Run a settlement (``settle``: a call's or a lease's) until the database takes it,
    then pause the agent if it reached a cap.

    The database away (a restart): the provider's usage is known and must not be lost,
    so it is tried again after each of SETTLE_RETRY_WAITS; settling twice is harmless,
    as only a pending row is settled. If it stays away, or anything else fails, the
    pending row stays and the sweeper charges its whole reservation.
    """
    for wait in (*SETTLE_RETRY_WAITS, None):
        try:
            state = await settle()
            break
        except OUTAGE as exc:
            if wait is None:
                logger.error(
                    "settling %s failed: the database stayed away (%s); the sweeper will "
                    "charge its reservation",
                    what,
                    exc.__class__.__name__,
                )
                return
            await asyncio.sleep(wait)
        except Exception:
            logger.exception("settling %s failed", what)
            return
    if at_cap(state):
        await in_db(pause_if_at_cap, state)


def settle_lease_sync(agent_id: uuid.UUID, params: dict[str, Any]) -> AgentState | None:
    """A lease's settlement (``leases.settlement_params``); None if settled already.
    Leases are PostgreSQL's alone."""
    with connection.cursor() as cursor:
        cursor.execute(ledger_sql.POSTGRESQL.settle_lease, params)
        return state_from_row(agent_id, cursor.fetchone())


def refusal_step_sync(params: dict[str, Any]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(_statements().refused_step, _params(params))


# --- the proxy's ledger ----------------------------------------------------------------------

_db_pool: ThreadPoolExecutor | None = None


async def in_db(fn, /, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` in a gateway database thread (each keeps its Django connection)."""
    global _db_pool
    if _db_pool is None:
        _db_pool = ThreadPoolExecutor(
            max_workers=settings.GATEWAY_DB_THREADS, thread_name_prefix="gateway-db"
        )
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_db_pool, functools.partial(_closing, fn, *args, **kwargs))


def _closing(fn, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    finally:
        if connection.errors_occurred:
            connection.close_if_unusable_or_obsolete()


class ThreadLedger:
    """The ledger through Django's connection in gateway threads (SQLite, local runs)."""

    async def config(self, token_hash: str) -> AgentConfig | None:
        return await in_db(config_sync, token_hash)

    async def price(self, provider: str, model: str) -> Price | None:
        return await in_db(price_sync, provider, model)

    async def admit(self, params: dict[str, Any]) -> Verdict | None:
        return await in_db(admit_sync, params)

    async def settle(
        self, reservation: Reservation, outcome: Outcome, *, model: str, now
    ) -> AgentState | None:
        return await in_db(settle_sync, reservation, outcome, model=model, now=now)

    async def refusal_step(self, params: dict[str, Any]) -> None:
        await in_db(refusal_step_sync, params)

    async def close(self) -> None:
        return None


class PgLedger:
    """The ledger on the event loop: asyncpg, one round trip a statement.

    Why asyncpg here and psycopg everywhere else: the gateway runs two or three
    statements per model call on its hot path, with up to thirty parameters or
    arrays of them. psycopg builds each in Python (about 250 µs of a worker's CPU
    for an admission, measured); asyncpg's codecs are compiled and take the types
    from the prepared statement (about 150 µs). Django keeps psycopg.

    Admission commits durably (``synchronous_commit = on``): the call goes
    upstream only once its reservation and pending ledger row are on disk, so
    no crash of the database can lose the trace of a call the provider will
    bill. Everything else commits without waiting for the WAL flush
    (``synchronous_commit = off``), so the agent's row lock is not held through
    an fsync; its effects are visible to every other call at once, so no cap
    can be passed. Settlement is then made durable off the client's path and
    without holding any lock: a second, empty transaction with an xid
    (``txid_current()``) commits durably, which flushes the WAL up to it, the
    settlement included. A crash of the database before that flush can lose a
    settlement, never an admission: the call's row is then pending again and the
    sweeper charges its whole reservation (``metering.charge_unsettled_calls``).

    Admissions and settlements go through a ``Batcher`` each: calls that arrive
    while a statement runs share the next one (the batch statements), a lone call
    runs the single-call statement at once.
    """

    def __init__(self) -> None:
        self._target = connect_arguments(connections["default"].settings_dict)
        self.lazy_pool: asyncpg.Pool | None = None  # commits without waiting for the disk
        self.durable_pool: asyncpg.Pool | None = None  # admissions, flushes: commits on disk
        self._checking: set[asyncio.Task] = set()
        self._opening: asyncio.Future | None = None
        self._flush_lock = asyncio.Lock()
        self._settled = self._durable = 0  # settlement batches committed, and known on disk
        # Two admission statements may run at once, so one held up (an agent's row
        # locked by an operator's edit) does not hold every call of this worker; the
        # settlements, off the client's path, run one at a time in larger batches.
        self._admissions = Batcher(
            self._admit_batch, in_flight=2, orphaned=self._release_orphan, outage=OUTAGE
        )
        # Calls being admitted or admitted here, not yet settled: while there are
        # any, a settlement waits a moment for theirs, so a busy worker settles in
        # few, large statements.
        self._unsettled: set[uuid.UUID] = set()
        self._settlements = Batcher(
            self._settle_batch,
            in_flight=1,
            outage=OUTAGE,
            linger=SETTLE_LINGER_SECONDS,
            more_coming=lambda: bool(self._unsettled),
        )
        # Leases (gateway.leases), by agent: the one being drawn from, the one being
        # asked for, and when the next may be asked for after a refusal; the calls
        # drawn and not yet answered, by their row.
        self._leases: dict[uuid.UUID, Lease] = {}
        self._asking: dict[uuid.UUID, asyncio.Task] = {}
        self._not_before: dict[uuid.UUID, float] = {}
        self._drawn: dict[uuid.UUID, tuple[Lease, dict[str, Any]]] = {}
        self._pace: dict[uuid.UUID, tuple[float, int]] = {}  # (since, calls since), by agent
        self._lease_tasks: set[asyncio.Task] = set()  # leases being settled

    async def _open(self) -> None:
        """The two pools, each with a connection ready (a call's settlement then does
        not wait to connect). If the database is down when the first call comes, that
        call fails with a 503 and the next one tries again."""
        size = settings.GATEWAY_DB_POOL_SIZE
        pools = await asyncio.gather(
            self._pool("off", max(size // 2, 2)), self._pool("on", size), return_exceptions=True
        )
        failed = [each for each in pools if isinstance(each, BaseException)]
        if failed:
            self._opening = None
            for pool in pools:
                if not isinstance(pool, BaseException):
                    pool.terminate()
            raise failed[0]
        self.lazy_pool, self.durable_pool = pools

    def _pool(self, synchronous_commit: str, size: int):
        return asyncpg.create_pool(
            **self._target,
            min_size=1,
            max_size=size,
            timeout=POOL_TIMEOUT_SECONDS,  # connecting
            server_settings={"synchronous_commit": synchronous_commit},
            reset=_keep_session,
        )

    async def _rows(self, statement: str, params: dict[str, Any], *, durable: bool = False) -> list:
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
        await asyncio.shield(self._opening)
        sql = ledger_sql.POSTGRESQL_RAW[statement]
        pool = self.durable_pool if durable else self.lazy_pool
        try:
            # Each connection prepares a statement the first time it runs it, then
            # reuses the plan (asyncpg's statement cache, by text).
            async with pool.acquire(timeout=POOL_TIMEOUT_SECONDS) as conn:
                return await conn.fetch(sql.text, *sql.args(params))
        except OUTAGE:
            self._check_soon(pool)
            raise

    def _check_soon(self, pool: asyncpg.Pool) -> None:
        """PostgreSQL went away (a restart): have every idle connection replaced
        before its next use, so each does not fail a call of its own afterwards.
        Connections are not checked on the way out of the pool: that would cost
        every call a round trip."""
        if self._checking:
            return
        task = asyncio.get_running_loop().create_task(pool.expire_connections())
        self._checking.add(task)
        task.add_done_callback(self._checking.discard)

    async def config(self, token_hash: str) -> AgentConfig | None:
        rows = await self._rows("config", {"hash": token_hash})
        return config_from_row(rows[0]) if rows else None

    async def price(self, provider: str, model: str) -> Price | None:
        rows = await self._rows("price", {"provider": provider, "model": model})
        return price_from_row(rows[0] if rows else None)

    async def admit(self, params: dict[str, Any]) -> Verdict | None:
        # Durable before it returns: the caller forwards the call next (a lease's
        # row is on disk before any call is drawn from it).
        agent, record = params["agent"], params["record"]
        self._unsettled.add(record)
        self._count_pace(agent)
        try:
            lease = await self._lease_for(params)
            if lease is not None:
                lease.draw(params)
                params["now"] = timezone.now()  # its row's admission time: the draw's
                self._drawn[record] = (lease, params)
                return lease.verdict
            verdict = await self._admissions.submit(agent, params)
        except BaseException:
            self._unsettled.discard(record)
            raise
        if verdict is None or verdict.code != "ok":
            self._unsettled.discard(record)
        if refuses_agent(verdict):
            self._close_open_lease(agent)
        return verdict

    def _count_pace(self, agent: uuid.UUID) -> None:
        """Count a call of ``agent`` in the GATEWAY_LEASE_SECONDS window it came in."""
        now = asyncio.get_running_loop().time()
        since, calls = self._pace.get(agent, (now, 0))
        if now - since > settings.GATEWAY_LEASE_SECONDS:
            since, calls = now, 0
        self._pace[agent] = (since, calls + 1)

    async def _lease_for(self, params: dict[str, Any]) -> Lease | None:
        """A lease of the agent's that covers the call: the open one, or a new one if the
        agent calls often here (``_lease_wanted``); None to admit the call alone."""
        agent = params["agent"]
        now = asyncio.get_running_loop().time()
        lease = self._leases.get(agent)
        if lease is not None:
            if lease.covers(params, now):
                if lease.running_out(now) and agent not in self._asking:
                    self._renew(agent, params, now)
                return lease
            self._close_lease(lease)
        asking = self._asking.get(agent)
        if asking is None:
            if not self._lease_wanted(agent, now):
                return None
            asking = self._ask(params)
        # Shielded: a lease granted to a call whose client left serves the next ones.
        lease = await asyncio.shield(asking)
        now = asyncio.get_running_loop().time()
        return lease if lease is not None and lease.covers(params, now) else None

    def _renew(self, agent: uuid.UUID, params: dict[str, Any], now: float) -> None:
        """Ask for the agent's next lease while its open one still serves, so that no
        call waits for a lease's admission while the agent keeps calling often."""
        if self._lease_wanted(agent, now):
            self._ask(params)

    def _ask(self, params: dict[str, Any]) -> asyncio.Task:
        asking = asyncio.get_running_loop().create_task(self._ask_for_lease(params))
        self._asking[params["agent"]] = asking
        # A renewal nobody awaits may fail (the database away): it is only retried later.
        asking.add_done_callback(lambda task: task.cancelled() or task.exception())
        return asking

    def _lease_wanted(self, agent: uuid.UUID, now: float) -> bool:
        return (
            leases.leasing()
            and self._pace[agent][1] >= leases.LEASE_AFTER_CALLS
            and now >= self._not_before.get(agent, 0)
        )

    async def _ask_for_lease(self, params: dict[str, Any]) -> Lease | None:
        agent = params["agent"]
        loop = asyncio.get_running_loop()
        # Its draws end this long after it was asked for: before its admission could see
        # the agent's tokens revoked, so a kill that waits as long after revoking them
        # outlasts it (gateway.leases).
        draws_until = loop.time() + settings.GATEWAY_LEASE_SECONDS
        wanted = leases.lease_params(params, calls=settings.GATEWAY_LEASE_CALLS)
        try:
            rows = await self._rows("admit", wanted, durable=True)
            verdict = verdict_from_row(rows[0]) if rows else None
        except BaseException:
            self._not_before[agent] = loop.time() + leases.LEASE_PAUSE_SECONDS
            raise
        finally:
            del self._asking[agent]
        if verdict is None or verdict.code != "ok":
            self._not_before[agent] = loop.time() + leases.LEASE_PAUSE_SECONDS
            if refuses_agent(verdict):
                self._close_open_lease(agent)
            return None
        # The lease it renews, if any, serves no more calls: it is settled once they
        # are answered.
        self._close_open_lease(agent)
        lease = self._leases[agent] = Lease.granted(wanted, verdict, draws_until)
        loop.call_at(draws_until, self._close_lease, lease)
        return lease

    def _close_open_lease(self, agent: uuid.UUID) -> None:
        lease = self._leases.get(agent)
        if lease is not None:
            self._close_lease(lease)

    def _close_lease(self, lease: Lease) -> None:
        """Draw no more from ``lease``; settle it once its calls are answered."""
        lease.open = False
        if self._leases.get(lease.agent_id) is lease:
            del self._leases[lease.agent_id]
        if lease.done and not lease.settling:
            lease.settling = True
            task = asyncio.get_running_loop().create_task(self._settle_lease(lease))
            self._lease_tasks.add(task)
            task.add_done_callback(self._lease_tasks.discard)

    async def _settle_lease(self, lease: Lease) -> None:
        params = leases.settlement(lease, timezone.now())
        params["batch"] = batch_json(lease.rows, ledger_sql.CALL_ROW_COLUMNS)

        async def settle() -> AgentState | None:
            rows = await self._rows("settle_lease", params)
            await self._settled_durably()
            return state_from_row(lease.agent_id, rows[0] if rows else None)

        await settle_until_taken(settle, f"lease {lease.record_id}")

    async def _admit_batch(self, calls: Sequence[dict[str, Any]]) -> list[Verdict | None]:
        if len(calls) == 1:  # the single-call statement: no arrays to build or unnest
            rows = await self._rows("admit", calls[0], durable=True)
            return [verdict_from_row(rows[0]) if rows else None]
        params = batch_params(calls, ledger_sql.ADMIT_COLUMNS)
        rows = await self._rows("admit_batch", params, durable=True)
        return verdicts_from_rows(rows, len(calls))

    async def _release_orphan(self, params: dict[str, Any], verdict: Verdict | None) -> None:
        """An admission whose caller was cancelled before it heard: nothing was
        forwarded, so its reservation is released uncharged."""
        if verdict is not None and verdict.code == "ok":
            outcome = Outcome(status="client_gone", http_status=None)
            await self.settle(
                reservation_for(params, verdict), outcome, model=params["model"], now=timezone.now()
            )

    async def settle(
        self, reservation: Reservation, outcome: Outcome, *, model: str, now
    ) -> AgentState | None:
        params = settle_params(reservation, outcome, model=model, now=now)
        self._unsettled.discard(reservation.record_id)
        drawn = self._drawn.get(reservation.record_id)
        if drawn is None:
            return await self._settlements.submit(reservation.agent_id, (reservation, params))
        # Drawn from a lease: its row and its charge are written with the lease's
        # settlement. A crash before that leaves the lease pending, and the sweeper
        # charges its whole reservation.
        lease, admitted = drawn
        del self._drawn[reservation.record_id]
        lease.answered(reservation, params, leases.call_row(admitted, lease, reservation, params))
        if lease.done:
            self._close_lease(lease)
        return None

    async def _settle_batch(
        self, settlements: Sequence[tuple[Reservation, dict[str, Any]]]
    ) -> list[AgentState | None]:
        states = await self._charge(settlements)
        await self._settled_durably()
        return states

    async def _charge(
        self, settlements: Sequence[tuple[Reservation, dict[str, Any]]]
    ) -> list[AgentState | None]:
        """The settlement statement for ``settlements``, committed without waiting for
        the disk; each agent's state after it."""
        if len(settlements) == 1:
            reservation, params = settlements[0]
            rows = await self._rows("settle", params)
            return [state_from_row(reservation.agent_id, rows[0] if rows else None)]
        params = batch_params([each for _, each in settlements], ledger_sql.SETTLE_COLUMNS)
        rows = await self._rows("settle_batch", params)
        return states_from_rows(rows, [reservation for reservation, _ in settlements])

    async def _settled_durably(self) -> None:
        """Count a settlement batch just committed; return once it is on disk."""
        self._settled += 1
        await self._flush(self._settled)

    async def _flush(self, settled: int) -> None:
        """Return once settlement batch number ``settled`` is on disk.

        One flush at a time; batches committed while one runs share the next
        (a group commit), so concurrent batches need not flush each.
        """
        async with self._flush_lock:
            if self._durable >= settled:
                return
            covered = self._settled
            await self._rows("flush", {}, durable=True)  # holds no lock
            self._durable = covered

    async def refusal_step(self, params: dict[str, Any]) -> None:
        await self._rows("refused_step", params)

    async def close(self) -> None:
        """Settle the leases (their calls are answered: the server stopped taking
        calls first), then close the pools."""
        await asyncio.gather(*self._asking.values(), return_exceptions=True)
        for lease in list(self._leases.values()):
            self._close_lease(lease)
        if self._lease_tasks:
            await asyncio.gather(*self._lease_tasks, return_exceptions=True)
        if self._opening is not None and self._opening.done() and not self._opening.exception():
            await asyncio.gather(self.lazy_pool.close(), self.durable_pool.close())


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Nothing to undo when a connection goes back to the pool: the ledger's statements
    leave no session state (no SET, LISTEN, cursor or advisory lock). asyncpg's default
    reset runs a statement on every release, one more round trip per statement."""


def connect_arguments(database: dict[str, Any]) -> dict[str, Any]:
    """asyncpg's connection arguments for Django's database settings: the same server,
    database and credentials, and the same TLS demands (libpq's ``sslmode`` and its
    certificate files, which asyncpg reads in a DSN's query)."""
    tls = {
        name: database["OPTIONS"][name]
        for name in ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl")
        if database.get("OPTIONS", {}).get(name)
    }
    host = database.get("HOST") or ""
    return {
        "dsn": "postgresql://?" + urlencode(tls) if tls else None,
        "host": host or None,  # none: asyncpg's default, the local socket, as libpq's
        "port": int(database["PORT"]) if database.get("PORT") else None,
        "user": database.get("USER") or None,
        "password": database.get("PASSWORD") or None,
        "database": database["NAME"],
    }


_ledgers: dict[asyncio.AbstractEventLoop, PgLedger | ThreadLedger] = {}
_ledgers_lock = threading.Lock()
# Loops whose ledger was closed (their server shutting down): a call still finishing
# there must not open new pools that nothing would ever close.
_closed_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


class LedgerClosed(RuntimeError):
    pass


def ledger() -> PgLedger | ThreadLedger:
    """This event loop's ledger (its connections are bound to the loop)."""
    loop = asyncio.get_running_loop()
    found = _ledgers.get(loop)
    if found is None:
        with _ledgers_lock:
            found = _ledgers.get(loop)
            if found is None:
                if loop in _closed_loops:
                    raise LedgerClosed("this event loop's gateway ledger was closed")
                vendor = connections["default"].vendor
                found = PgLedger() if vendor == "postgresql" else ThreadLedger()
                _ledgers[loop] = found
    return found


async def close_loop_ledger() -> None:
    """Close the running loop's ledger (its pool), from that loop."""
    loop = asyncio.get_running_loop()
    with _ledgers_lock:
        found = _ledgers.pop(loop, None)
        _closed_loops.add(loop)
    if found is not None:
        await found.close()


def close_ledgers(timeout: float = 10) -> None:
    """Close every loop's pool and the database threads (tests, shutdown)."""
    global _db_pool
    with _ledgers_lock:
        found = list(_ledgers.items())
        _ledgers.clear()
        _closed_loops.update(loop for loop, _ in found)
    for loop, each in found:
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(each.close(), loop).result(timeout)
    pool, _db_pool = _db_pool, None
    if pool is None:
        return
    workers = pool._max_workers
    barrier = threading.Barrier(workers)

    def close_here() -> None:
        barrier.wait(timeout=10)  # one call per thread: each waits for the others
        connections.close_all()

    for future in [pool.submit(close_here) for _ in range(workers)]:
        future.result(timeout=15)
    pool.shutdown(wait=True)
