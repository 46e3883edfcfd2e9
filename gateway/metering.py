"""Admitting a model call (token, limits, reservation) and settling it.

Caps never overshoot: before a call is forwarded its worst-case tokens and
cost are *reserved* on the agent with one conditional UPDATE that succeeds
only if settled spend + calls in flight + this call fit under each cap. After
the response the actual usage is *settled* and the reservation released. A
call that never settles (a crashed worker) leaves its ledger row pending; the
sweeper releases it. Both run synchronously in the gateway's database threads.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, F, Value, When
from django.db.models.functions import Greatest
from django.utils import timezone

from agents.models import Agent, AgentStatus, AgentToken
from agents.tokens import hash_token, looks_like_token
from agents.tools import tool_name_of
from gateway import ledger_sql
from gateway.models import AgentRun, ModelPrice, UsageRecord, UsageStatus
from gateway.providers import Call, Provider, Usage

logger = logging.getLogger(__name__)
MILLION = Decimal(1_000_000)
MICRO = Decimal("0.000001")
CACHE_WRITE_MULTIPLIER = Decimal("1.25")  # Anthropic bills cache writes at 1.25x input
PRICE_TTL_SECONDS = 10.0


class Refusal(Exception):
    """The call is refused before it costs anything; the message names why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Price:
    input_per_mtok: Decimal
    cached_input_per_mtok: Decimal
    output_per_mtok: Decimal

    def cost(self, usage: Usage) -> Decimal:
        uncached = max(
            usage.input_tokens - usage.cached_input_tokens - usage.cache_creation_input_tokens, 0
        )
        total = (
            uncached * self.input_per_mtok
            + usage.cached_input_tokens * self.cached_input_per_mtok
            + usage.cache_creation_input_tokens * self.input_per_mtok * CACHE_WRITE_MULTIPLIER
            + usage.output_tokens * self.output_per_mtok
        ) / MILLION
        return total.quantize(MICRO, rounding=ROUND_HALF_UP)

    def worst_cost(self, call: Call) -> Decimal:
        highest_input = max(self.input_per_mtok * CACHE_WRITE_MULTIPLIER, self.input_per_mtok)
        total = (
            call.input_upper_bound * highest_input + call.max_output_tokens * self.output_per_mtok
        ) / MILLION
        return total.quantize(MICRO, rounding=ROUND_CEILING)


_prices: dict[tuple[str, str], tuple[Price | None, float]] = {}


def forget_prices() -> None:
    """Drop cached prices (called when an operator edits the price table)."""
    _prices.clear()


def price_for(provider: str, model: str) -> Price | None:
    """The price of ``model``, or of the model it is a dated snapshot of."""
    key = (provider, model)
    cached = _prices.get(key)
    if cached and time.monotonic() - cached[1] < PRICE_TTL_SECONDS:
        return cached[0]
    rows = {
        row.model: row
        for row in ModelPrice.objects.filter(provider=provider, model__in=_names_for(model))
    }
    row = rows.get(model) or next(iter(rows.values()), None)
    price = (
        Price(row.input_per_mtok, row.cached_input_per_mtok, row.output_per_mtok) if row else None
    )
    _prices[key] = (price, time.monotonic())
    return price


def _names_for(model: str) -> list[str]:
    # "gpt-4o-2024-08-06" is priced as "gpt-4o"; "claude-sonnet-4-5-20250929"
    # as "claude-sonnet-4-5". Only a trailing date is dropped, nothing else.
    names = [model]
    head, _, tail = model.rpartition("-")
    if head and tail.isdigit() and len(tail) == 8:
        names.append(head)
    parts = model.split("-")
    if len(parts) > 3 and all(p.isdigit() for p in parts[-3:]) and len(parts[-3]) == 4:
        names.append("-".join(parts[:-3]))
    return names


@dataclass
class Admission:
    agent_id: uuid.UUID
    provider_key: str
    record_id: uuid.UUID
    reserved_tokens: int
    reserved_cost: Decimal
    price: Price
    run_pk: int | None


def admit(
    *, token: str, provider: Provider, payload: dict, raw_size: int, run_id: str
) -> tuple[Admission, Call]:
    """Authenticate the agent, check and clamp the request, reserve its worst case.

    Raises Refusal (with the status to answer) or BadRequest; nothing is
    reserved then.
    """
    try:
        return _admit(token, provider, payload, raw_size, run_id)
    finally:
        _release_connection()


def _admit(
    token: str, provider: Provider, payload: dict, raw_size: int, run_id: str
) -> tuple[Admission, Call]:
    agent = _agent_for_token(token)
    if agent is None:
        raise Refusal(401, "Invalid, unknown or revoked agent token.")
    if agent.status != AgentStatus.RUNNING:
        raise Refusal(403, f"This agent is {agent.status}; model calls are refused.")
    if agent.ai_provider != provider.name:
        raise Refusal(400, f"This agent is set up for {agent.ai_provider}, not {provider.name}.")
    call = provider.prepare(
        payload, raw_size=raw_size, max_tokens_limit=agent.max_tokens_per_request
    )
    provider_key = agent.provider_key
    if not provider_key:
        raise Refusal(403, "This agent has no provider key on file.")
    _check_rate(agent)
    _check_tools(agent, call)
    today = timezone.now().date()
    if agent.tokens_day == today and agent.tool_calls_today >= agent.max_tool_calls_per_day:
        raise Refusal(429, f"Max tool calls per day ({agent.max_tool_calls_per_day}) reached.")
    run = _open_run(agent, run_id) if run_id else None
    price = price_for(provider.name, call.model)
    if price is None:
        raise Refusal(
            400,
            f"Model '{call.model}' has no price in the price table, so it is refused "
            "rather than metered as free.",
        )
    return _reserve(agent, provider, call, price, run, provider_key), call


@dataclass(frozen=True)
class AgentView:
    """What admission needs of an agent, read in one query without building a model."""

    pk: uuid.UUID
    status: str
    ai_provider: str
    sealed_key: str | None
    max_tokens_per_request: int
    max_requests_per_minute: int
    allowed_tools: list[str]
    tokens_day: dt.date | None
    tool_calls_today: int
    max_tool_calls_per_day: int
    max_tool_calls_per_run: int
    max_runtime_seconds: int

    @property
    def provider_key(self) -> str | None:
        if self.sealed_key is None:
            return None
        return Agent._meta.get_field("ai_api_key").open_for_pk(self.pk, self.sealed_key)


_VIEW_COLUMNS = ", ".join(
    f"a.{Agent._meta.get_field(name).column}"
    for name in (
        "id",
        "status",
        "ai_provider",
        "ai_api_key",
        "max_tokens_per_request",
        "max_requests_per_minute",
        "allowed_tools",
        "tokens_day",
        "tool_calls_today",
        "max_tool_calls_per_day",
        "max_tool_calls_per_run",
        "max_runtime_seconds",
    )
)
# Table and column names are constants; the token's hash is a parameter.
_TOKEN_LOOKUP = (
    f"SELECT {_VIEW_COLUMNS} FROM {Agent._meta.db_table} a "  # noqa: S608
    f"JOIN {AgentToken._meta.db_table} t ON t.agent_id = a.id "
    "WHERE t.token_hash = %s AND t.revoked_at IS NULL"
)


def _agent_for_token(raw: str) -> AgentView | None:
    """The token's agent, read fresh (a revocation counts from the next call).

    agents.tokens.token_agent in one plain query of the columns admission needs.
    """
    if not looks_like_token(raw):
        return None
    with connection.cursor() as cursor:
        cursor.execute(_TOKEN_LOOKUP, [hash_token(raw)])
        row = cursor.fetchone()
    if row is None:
        return None
    pk, status, provider, sealed, max_tokens, rpm, tools, day, calls, per_day, per_run, runtime = (
        row
    )
    return AgentView(
        pk=pk if isinstance(pk, uuid.UUID) else uuid.UUID(pk),
        status=status,
        ai_provider=provider,
        sealed_key=sealed,
        max_tokens_per_request=max_tokens,
        max_requests_per_minute=rpm,
        allowed_tools=json.loads(tools) if isinstance(tools, str) else (tools or []),
        tokens_day=dt.date.fromisoformat(day) if isinstance(day, str) else day,
        tool_calls_today=calls,
        max_tool_calls_per_day=per_day,
        max_tool_calls_per_run=per_run,
        max_runtime_seconds=runtime,
    )


def _check_tools(agent: AgentView, call: Call) -> None:
    allowed = set(agent.allowed_tools or [])
    for name in call.tool_names:
        # Providers allow no dots in function names: `notes__save` is `notes.save`.
        if tool_name_of(name) not in allowed:
            raise Refusal(400, f"Tool '{name}' is not on this agent's allow-list.")


def _open_run(agent: AgentView, run_id: str) -> AgentRun:
    if len(run_id) > 64:
        raise Refusal(400, "X-SaferClaw-Run must be at most 64 characters.")
    now = timezone.now()
    run, _ = AgentRun.objects.get_or_create(
        agent_id=agent.pk,
        run_id=run_id,
        defaults={"deadline": now + dt.timedelta(seconds=agent.max_runtime_seconds)},
    )
    if now > run.deadline:
        raise Refusal(
            429, f"Max runtime per run ({agent.max_runtime_seconds} s) is over for run {run_id}."
        )
    if run.tool_calls >= agent.max_tool_calls_per_run:
        raise Refusal(
            429,
            f"Max tool calls per run ({agent.max_tool_calls_per_run}) reached for run {run_id}.",
        )
    return run


def _spent_today(today: dt.date) -> Case:
    return Case(When(tokens_day=today, then=F("tokens_today")), default=Value(0))


def _reserve(
    agent: AgentView, provider: Provider, call: Call, price: Price, run: AgentRun | None, key: str
) -> Admission:
    tokens, cost = call.worst_case_tokens, price.worst_cost(call)
    record_id = uuid.uuid4()
    reserved = ledger_sql.reserve(
        agent_id=agent.pk,
        record_id=record_id,
        provider=provider.name,
        model=call.model,
        streamed=call.stream,
        tokens=tokens,
        cost=cost,
        run_id=run.run_id if run else "",
        now=timezone.now(),
    )
    if not reserved:
        raise _why_refused(agent.pk, tokens, cost)
    return Admission(
        agent_id=agent.pk,
        provider_key=key,
        record_id=record_id,
        reserved_tokens=tokens,
        reserved_cost=cost,
        price=price,
        run_pk=run.pk if run else None,
    )


def _why_refused(agent_id: uuid.UUID, tokens: int, cost: Decimal) -> Refusal:
    agent = Agent.objects.get(pk=agent_id)
    today = timezone.now().date()
    spent = agent.tokens_today if agent.tokens_day == today else 0
    if agent.status != AgentStatus.RUNNING:
        return Refusal(403, f"This agent is {agent.status}; model calls are refused.")
    if spent + tokens > agent.daily_token_cap:
        if spent >= agent.daily_token_cap:
            pause_for_cap(agent, f"daily token cap of {agent.daily_token_cap:,} tokens reached")
            return Refusal(429, f"Daily token cap of {agent.daily_token_cap:,} tokens reached.")
        if spent + tokens - agent.reserved_tokens <= agent.daily_token_cap:
            return Refusal(429, "Calls in flight hold the rest of the daily token cap; retry.")
        return Refusal(
            429,
            f"This call could use up to {tokens:,} tokens, more than the "
            f"{agent.daily_token_cap - spent:,} left of the daily token cap of "
            f"{agent.daily_token_cap:,}. Lower max_tokens or wait for tomorrow (UTC).",
        )
    cap, period = agent.monthly_cost_cap, agent.cost_this_period
    if period >= cap:
        pause_for_cap(agent, f"monthly cost cap of ${cap} reached")
        return Refusal(402, f"Monthly cost cap of ${cap} reached.")
    if period + cost - agent.reserved_cost <= cap:
        return Refusal(429, "Calls in flight hold the rest of the monthly cost cap; retry.")
    return Refusal(
        402,
        f"This call could cost up to ${cost}, more than the ${cap - period} left of the "
        f"monthly cost cap of ${cap}. Lower max_tokens.",
    )


def settle(
    admission: Admission,
    *,
    usage: Usage,
    tool_calls: int,
    status: str,
    http_status: int | None,
    latency_ms: int,
    upstream_request_id: str = "",
) -> Decimal:
    """Charge the actual usage, release the reservation, pause at a cap; returns the cost."""
    try:
        return _settle(
            admission, usage, tool_calls, status, http_status, latency_ms, upstream_request_id
        )
    finally:
        _release_connection()


def _settle(admission, usage, tool_calls, status, http_status, latency_ms, request_id) -> Decimal:
    cost = admission.price.cost(usage)
    now = timezone.now()
    state = ledger_sql.settle(
        agent_id=admission.agent_id,
        record_id=admission.record_id,
        reserved_tokens=admission.reserved_tokens,
        reserved_cost=admission.reserved_cost,
        status=status,
        http_status=http_status,
        usage=usage,
        tool_calls=tool_calls,
        cost=cost,
        latency_ms=latency_ms,
        request_id=request_id,
        now=now,
    )
    if admission.run_pk and tool_calls:
        AgentRun.objects.filter(pk=admission.run_pk).update(tool_calls=F("tool_calls") + tool_calls)
    if state.status == AgentStatus.RUNNING:
        if state.tokens_day == now.date() and state.tokens_today >= state.daily_token_cap:
            reason = f"daily token cap of {state.daily_token_cap:,} tokens reached"
            pause_for_cap(Agent.objects.get(pk=admission.agent_id), reason)
        elif state.cost_this_period >= state.monthly_cost_cap:
            reason = f"monthly cost cap of ${state.monthly_cost_cap} reached"
            pause_for_cap(Agent.objects.get(pk=admission.agent_id), reason)
    return cost


def pause_for_cap(agent: Agent, reason: str) -> None:
    """Pause the agent now; a Celery task stops its container and tells the owner."""
    from gateway.tasks import stop_agent_at_cap

    try:
        changed = agent.transition(AgentStatus.PAUSED, source="gateway", reason=reason)
    except Exception:  # already killed, deleted…: nothing to pause
        logger.info("agent %s not paused at cap: state changed meanwhile", agent.pk)
        return
    if changed:
        transaction.on_commit(lambda: _enqueue(stop_agent_at_cap, str(agent.pk)))


def _enqueue(task, *args: str) -> None:
    # The pause is recorded already; if the broker is down, reconciliation
    # stops the paused agent's container on its next pass.
    try:
        task.delay(*args)
    except Exception:
        logger.exception("could not enqueue %s for %s", task.name, args)


def release_stale_reservations(*, older_than: dt.timedelta) -> int:
    """Release reservations of calls that never settled (e.g. a crashed worker)."""
    released = 0
    cutoff = timezone.now() - older_than
    for record in UsageRecord.objects.filter(status=UsageStatus.PENDING, created_at__lt=cutoff):
        with transaction.atomic():
            if not UsageRecord.objects.filter(pk=record.pk, status=UsageStatus.PENDING).update(
                status=UsageStatus.RELEASED, settled_at=timezone.now()
            ):
                continue
            Agent.objects.filter(pk=record.agent_id).update(
                reserved_tokens=Greatest(F("reserved_tokens") - record.reserved_tokens, 0),
                reserved_cost=Greatest(F("reserved_cost") - record.reserved_cost, Decimal(0)),
            )
            released += 1
    return released


# --- Requests per minute ---------------------------------------------------------------

_redis_clients: dict[str, object] = {}


def _check_rate(agent: AgentView) -> None:
    window = int(time.time() // 60)
    count = (
        _count_in_redis(agent.pk, window) if settings.REDIS_URL else _count_in_db(agent.pk, window)
    )
    if count > agent.max_requests_per_minute:
        raise Refusal(
            429, f"Rate limit of {agent.max_requests_per_minute} requests per minute reached."
        )


def _count_in_redis(agent_id: uuid.UUID, window: int) -> int:
    client = _redis_clients.get(settings.REDIS_URL)
    if client is None:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1)
        _redis_clients[settings.REDIS_URL] = client
    key = f"saferclaw:gw:rpm:{agent_id}:{window}"
    pipe = client.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, 120)
    return int(pipe.execute()[0])


def _count_in_db(agent_id: uuid.UUID, window: int) -> int:
    from gateway.models import RateWindow

    table = RateWindow._meta.db_table
    agent_db_id = RateWindow._meta.get_field("agent").target_field.get_db_prep_value(
        agent_id, connection
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (agent_id, minute, count) VALUES (%s, %s, 1) "  # noqa: S608
            f"ON CONFLICT (agent_id, minute) DO UPDATE SET count = {table}.count + 1 "
            "RETURNING count",
            [agent_db_id, window],
        )
        return cursor.fetchone()[0]


def _release_connection() -> None:
    """Gateway threads keep one connection each; drop it only after an error broke it."""
    if connection.errors_occurred:
        connection.close_if_unusable_or_obsolete()
