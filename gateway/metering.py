"""Prices, what each refusal says, and what happens at a cap.

Caps never overshoot: before a call is forwarded its worst case (tokens, cost,
one model step, at most one tool call) is *reserved* on the agent and on its
active run under their row locks, and only if settled use + calls in flight +
this call fit every limit (gateway.ledger_sql.VERDICT says which binds). After
the response the actual usage is *settled*: the provider's own usage, or, when
the call did not end with it (a timeout, a broken stream, an unparseable answer,
a process that died: the sweeper), the whole reservation.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

from django.db import transaction
from django.utils import timezone

from agents.models import Agent, AgentStatus
from gateway.providers import Call, Usage

logger = logging.getLogger(__name__)
MILLION = Decimal(1_000_000)
MICRO = Decimal("0.000001")


@dataclass(frozen=True)
class Price:
    """One ModelPrice row, in $ per million tokens."""

    input_per_mtok: Decimal
    cached_input_per_mtok: Decimal
    cache_write_5m_per_mtok: Decimal
    cache_write_1h_per_mtok: Decimal | None
    output_per_mtok: Decimal

    def prices(self, call: Call) -> bool:
        """Whether every rate this call may be billed at is known."""
        return not call.long_cache or self.cache_write_1h_per_mtok is not None

    def cost(self, usage: Usage) -> Decimal:
        written_1h = min(usage.cache_write_1h_tokens, usage.cache_creation_input_tokens)
        written_5m = usage.cache_creation_input_tokens - written_1h
        uncached = max(
            usage.input_tokens - usage.cached_input_tokens - usage.cache_creation_input_tokens, 0
        )
        rate_1h = self.cache_write_1h_per_mtok
        if rate_1h is None:  # never asked for (refused at admission): the highest rate
            rate_1h = max(self.input_per_mtok, self.cache_write_5m_per_mtok) * 2
        total = (
            uncached * self.input_per_mtok
            + usage.cached_input_tokens * self.cached_input_per_mtok
            + written_5m * self.cache_write_5m_per_mtok
            + written_1h * rate_1h
            + usage.output_tokens * self.output_per_mtok
        ) / MILLION
        return total.quantize(MICRO, rounding=ROUND_HALF_UP)

    def worst_cost(self, call: Call) -> Decimal:
        rates = [self.input_per_mtok, self.cache_write_5m_per_mtok]
        if call.long_cache and self.cache_write_1h_per_mtok is not None:
            rates.append(self.cache_write_1h_per_mtok)
        total = (
            call.input_upper_bound * max(rates) + call.max_output_tokens * self.output_per_mtok
        ) / MILLION
        return total.quantize(MICRO, rounding=ROUND_CEILING)


@dataclass(frozen=True)
class Refusal:
    """Why a call is refused: the status, the message, and the limit that binds."""

    status: int
    message: str
    limit: str
    pause_reason: str = ""  # the agent is at a cap: pause it


# verdict code -> (status, limit field, message template)
_LIMITS: dict[str, tuple[int, str, str]] = {
    "rate": (429, "max_requests_per_minute", "Rate limit of {n} requests per minute reached."),
    "run_runtime": (
        429,
        "max_runtime_seconds",
        "Max runtime per run ({n} s) is over for this run.",
    ),
    "run_steps": (429, "max_model_steps_per_run", "Max model steps per run ({n}) reached."),
    "run_tools": (429, "max_tool_calls_per_run", "Max tool calls per run ({n}) reached."),
    "day_steps": (
        429,
        "max_model_steps_per_run",
        "Max model calls per UTC day outside a run ({n}, the per-run limit) reached.",
    ),
    "day_run_tools": (
        429,
        "max_tool_calls_per_run",
        "Max tool calls per UTC day outside a run ({n}, the per-run limit) reached.",
    ),
    "day_tools": (429, "max_tool_calls_per_day", "Max tool calls per day ({n}) reached."),
}


def refusal_for(verdict, *, tokens: int, cost: Decimal) -> Refusal:
    """The refusal a verdict (gateway.ledger.Verdict) stands for, naming the limit that binds."""
    code = verdict.code
    if code == "not_running":
        if verdict.status == AgentStatus.RUNNING:
            message = "This agent's subscription is not active; model calls are refused."
        else:
            message = f"This agent is {verdict.status}; model calls are refused."
        return Refusal(403, message, "agent_status")
    base = code.removesuffix("_inflight")
    if base in _LIMITS:
        status, limit, template = _LIMITS[base]
        message = template.format(n=getattr(verdict, limit))
        if code.endswith("_inflight"):
            message = message.replace(" reached.", " held by calls in flight; retry.")
        return Refusal(status, message, limit)
    cap, spent = verdict.daily_token_cap, verdict.spent_tokens
    if code == "tokens_cap":
        return Refusal(
            429,
            f"Daily token cap of {cap:,} tokens reached.",
            "daily_token_cap",
            pause_reason=f"daily token cap of {cap:,} tokens reached",
        )
    if code == "tokens_call":
        return Refusal(
            429,
            f"This call could use up to {tokens:,} tokens, more than the {cap - spent:,} left "
            f"of the daily token cap of {cap:,}. Lower max_tokens or wait for tomorrow (UTC).",
            "daily_token_cap",
        )
    if code == "tokens_inflight":
        return Refusal(
            429, "Calls in flight hold the rest of the daily token cap; retry.", "daily_token_cap"
        )
    money = Decimal(str(verdict.monthly_cost_cap)).quantize(Decimal("0.01"))
    period = Decimal(str(verdict.cost_this_period))
    if code == "cost_cap":
        return Refusal(
            402,
            f"Monthly cost cap of ${money} reached.",
            "monthly_cost_cap",
            pause_reason=f"monthly cost cap of ${money} reached",
        )
    if code == "cost_call":
        return Refusal(
            402,
            f"This call could cost up to ${cost}, more than the ${money - period} left of the "
            f"monthly cost cap of ${money}. Lower max_tokens.",
            "monthly_cost_cap",
        )
    if code == "cost_inflight":
        return Refusal(
            429, "Calls in flight hold the rest of the monthly cost cap; retry.", "monthly_cost_cap"
        )
    raise ValueError(f"unknown verdict {code!r}")


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


def cap_reached(state) -> str | None:
    """Which cap a running agent's settled spend (a settlement's state, or None) reached,
    as the reason to pause it; None if none."""
    if state is None or state.status != AgentStatus.RUNNING:
        return None
    if state.tokens_day == timezone.now().date() and state.tokens_today >= state.daily_token_cap:
        return f"daily token cap of {state.daily_token_cap:,} tokens reached"
    if state.cost_this_period >= state.monthly_cost_cap:
        return f"monthly cost cap of ${state.monthly_cost_cap} reached"
    return None


def at_cap(state) -> bool:
    """Whether to pause the agent (``cap_reached``): checked on the event loop, so a
    settlement hops to a database thread only when there is something to do."""
    return cap_reached(state) is not None


def pause_if_at_cap(state) -> None:
    """After a settlement: pause an agent whose settled spend reached a cap."""
    if reason := cap_reached(state):
        pause_for_cap(Agent.objects.get(pk=state.agent_id), reason)


def _enqueue(task, *args: str) -> None:
    # The pause is recorded already; if the broker is down, reconciliation
    # stops the paused agent's container on its next pass.
    try:
        task.delay(*args)
    except Exception:
        logger.exception("could not enqueue %s for %s", task.name, args)


def charge_unsettled_calls(*, older_than: dt.timedelta) -> int:
    """Charge calls that never settled (their gateway process died) their full reservation.

    The provider may well have finished and billed such a call; only its usage
    is unknown, so the worst case reserved for it is what it costs.
    """
    from gateway import ledger
    from gateway.models import UsageRecord, UsageStatus

    charged = 0
    cutoff = timezone.now() - older_than
    pending = UsageRecord.objects.filter(status=UsageStatus.PENDING, created_at__lt=cutoff)
    for record in pending.iterator():
        if record.is_lease:
            state = ledger.settle_lease_sync(record.agent_id, _left_lease(record))
        else:
            state = ledger.settle_sync(
                ledger.Reservation.of_record(record),
                ledger.Outcome.full_reservation(UsageStatus.SWEPT, http_status=None),
                model=record.model,
                now=timezone.now(),
            )
        if state is not None:
            charged += 1
            pause_if_at_cap(state)
    return charged


def _left_lease(lease) -> dict:
    """The settlement of a lease whose worker died: its whole reservation, as the lease
    row's own charge (its calls' rows are written only with the settlement its worker
    did not live to make). Every call it could have admitted counts as a step; no
    request of the rate is given back."""
    from gateway.leases import settlement_params
    from gateway.models import UsageStatus

    own_input = lease.reserved_tokens - lease.reserved_output_tokens
    return settlement_params(
        lease.pk,
        status=UsageStatus.SWEPT,
        minute=0,
        unused=0,
        steps=lease.reserved_calls,
        tokens=lease.reserved_tokens,
        cost=lease.reserved_cost,
        tool_calls=lease.reserved_tool_calls,
        now=timezone.now(),
        own_input=own_input,
        own_output=lease.reserved_output_tokens,
        own_cost=lease.reserved_cost,
        own_tool_calls=lease.reserved_tool_calls,
    )
