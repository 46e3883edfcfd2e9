"""What the dashboard's pages show and do, apart from the HTTP handling (views.py).

Usage against the caps (and which cap paused the agent, until when), the
conversation with each run's steps, the kill switch recipe filled in for one
agent, and the owner's "stop all my agents".
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import Count, F, Max, Prefetch, Sum
from django.utils import timezone

from agents.conversations import Message, Run, RunStep, Schedule
from agents.kill_switch import KillOutcome, curl_recipe, kill_agent
from agents.models import ALLOWED_TRANSITIONS, Agent, AgentEvent, AgentStatus, InvalidTransition
from gateway.selectors import agent_daily_usage, settled_calls

S = AgentStatus
CONVERSATION_PAGE = 50
# What "stop all" stops: whatever runs, or could run again without its owner
# (a paused agent resumes by itself when its cap resets).
STOPPABLE = (S.PROVISIONING, S.RUNNING, S.PAUSED)
STARTABLE = tuple(
    s for s, allowed in ALLOWED_TRANSITIONS.items() if S.PROVISIONING in allowed and s != S.FAILED
)
STOPPABLE_ONE = (S.RUNNING, S.PAUSED)


# --- Usage against the caps -------------------------------------------------------------------


@dataclass(frozen=True)
class Meter:
    """One cap: how much is used, of how much, and when the count starts afresh."""

    label: str
    used: Decimal
    cap: Decimal
    resets_at: dt.datetime | None
    money: bool = False

    @property
    def percent(self) -> int:
        if self.cap <= 0:
            return 100 if self.used > 0 else 0
        return min(100, int(self.used * 100 / self.cap))

    @property
    def shown(self) -> str:
        """The amount used, in words: a few cents still show as more than $0.00."""
        return money(self.used) if self.money else f"{int(self.used):,}"

    @property
    def level(self) -> str:
        """For the bar's colour: ok below 80 %, warn from 80 %, full at the cap."""
        return "full" if self.percent >= 100 else "warn" if self.percent >= 80 else "ok"


@dataclass(frozen=True)
class Usage:
    tokens: Meter
    cost: Meter
    paused_by: Meter | None  # the cap that paused the agent, if one did


def usage_of(agent: Agent, *, now: dt.datetime | None = None) -> Usage:
    now = now or timezone.now()
    today = now.astimezone(dt.UTC).date()
    # The gateway rolls tokens_today over lazily: a count from another day is zero today.
    tokens_used = agent.tokens_today if agent.tokens_day == today else 0
    midnight = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    started = agent.period_started_at  # set by billing at each paid period
    tokens = Meter("Tokens today", Decimal(tokens_used), Decimal(agent.daily_token_cap), midnight)
    cost = Meter(
        "Model cost this period",
        Decimal(agent.cost_this_period),
        Decimal(agent.monthly_cost_cap),
        _one_month_after(started) if started else None,
        money=True,
    )
    return Usage(tokens=tokens, cost=cost, paused_by=_paused_by(agent, tokens, cost))


def money(amount: Decimal) -> str:
    """Dollars as a person reads them: cents, or the digits that make a tiny amount show."""
    return f"${amount:.6f}" if 0 < amount < Decimal("0.01") else f"${amount:.2f}"


def _paused_by(agent: Agent, tokens: Meter, cost: Meter) -> Meter | None:
    """The cap the gateway paused the agent at (its pause reason names it)."""
    if agent.status != S.PAUSED:
        return None
    if "daily token cap" in agent.status_reason:
        return tokens
    if "monthly cost cap" in agent.status_reason:
        return cost
    return None


def _one_month_after(start: dt.datetime) -> dt.datetime:
    """The same day and time a month later (the last day of a shorter month)."""
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


# --- The conversation -----------------------------------------------------------------------


def conversation(agent: Agent, *, limit: int = CONVERSATION_PAGE) -> list[Message]:
    """The latest messages, oldest first, each inbound one with its run and steps."""
    steps = Prefetch("run__steps", queryset=RunStep.objects.order_by("created_at", "id"))
    latest = (
        Message.objects.filter(agent=agent)
        .select_related("run")
        .prefetch_related(steps)
        .order_by("-id")[:limit]
    )
    messages = list(latest)[::-1]
    for message in messages:
        run = getattr(message, "run", None) if message.in_reply_to_id is None else None
        for step in run.steps.all() if run else ():
            step.row = step_row(step)  # the prefetched instances the template iterates
    return messages


def step_row(step: RunStep) -> dict[str, Any]:
    """A run's step as the page lists it: metadata only, as stored."""
    detail = step.detail if isinstance(step.detail, dict) else {}
    tokens = [detail.get(k) for k in ("input_tokens", "output_tokens")]
    outcome = detail.get("outcome") or detail.get("status") or detail.get("code") or ""
    return {
        "tokens": sum(t for t in tokens if isinstance(t, int)) if any(tokens) else None,
        "cost": detail.get("cost"),
        "digest": detail.get("arguments_sha256") or "",
        "outcome": outcome,
        "reason": detail.get("reason") or "",
        "latency_ms": detail.get("latency_ms"),
        "tools": ", ".join(detail.get("tools_requested") or []),
    }


def conversation_version(agent: Agent) -> str:
    """Changes whenever the conversation shown would: a message, a run or a step."""
    runs = Run.objects.filter(agent=agent)
    parts: list[Any] = [
        agent.status,
        agent.status_reason,
        Message.objects.filter(agent=agent).aggregate(m=Max("id"))["m"],
        RunStep.objects.filter(run__agent=agent).aggregate(m=Max("id"))["m"],
        list(
            runs.exclude(status__in=("done", "failed", "canceled", "stopped")).values_list(
                "id", "status"
            )
        ),
        runs.aggregate(m=Max("finished_at"))["m"],
        agent.tokens_today,
        agent.cost_this_period,
    ]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def recent_events(agent: Agent, *, limit: int = 15) -> list[AgentEvent]:
    return list(agent.events.order_by("-created_at", "-id")[:limit])


def schedules_of(agent: Agent) -> list[Schedule]:
    return list(Schedule.objects.filter(agent=agent))


# --- The kill switch, filled in ----------------------------------------------------------


def kill_switch_recipe(*, agent: Agent, base_url: str, secret: str) -> str:
    """The README's v2 recipe with this agent's id and secret set: paste and run.

    Only ever rendered in answer to the owner asking to see the secret."""
    return f"AGENT_ID='{agent.pk}'\nSECRET='{secret}'\n" + curl_recipe(base_url=base_url)


# --- Stop all ------------------------------------------------------------------------------


def stop_all_agents(*, owner: Any) -> list[KillOutcome]:
    """The owner's big red button: every agent that runs (or would resume) is killed
    (tokens revoked first, then the container stopped), so it holds with the
    droplet unreachable too. Each one runs again only when its owner starts it."""
    outcomes = []
    stoppable = Agent.objects.filter(owner=owner, status__in=STOPPABLE).order_by("name")
    for agent in stoppable.select_related("droplet"):
        try:
            outcomes.append(
                kill_agent(
                    agent=agent, actor=owner, source="owner", reason="stopped: stop all my agents"
                )
            )
        except InvalidTransition:
            continue  # deleted meanwhile
    return outcomes


# --- The 30-day chart ------------------------------------------------------------------------

CHART_DAYS = 30
CHART_W, CHART_H, CHART_PAD = 600, 160, 4


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass(frozen=True)
class Chart:
    """One inline SVG chart, drawn server side: bars (or a line) and the cap's line."""

    title: str
    bars: list[Bar]
    points: str  # an SVG polyline's points, for a running total
    cap_y: float | None  # None: the cap is far above the chart's scale
    cap_label: str
    summary: str
    width: int = CHART_W
    height: int = CHART_H


def usage_charts(agent: Agent, *, today: dt.date | None = None) -> list[Chart]:
    """Tokens per UTC day against the daily token cap, and the running cost of those
    30 days against the monthly cost cap, from the usage ledger."""
    today = today or timezone.now().astimezone(dt.UTC).date()
    days = agent_daily_usage(
        agent=agent, start=today - dt.timedelta(days=CHART_DAYS - 1), end=today
    )
    token_cap = Decimal(agent.daily_token_cap)
    tokens = [Decimal(day.tokens) for day in days]
    running, total = [], Decimal("0")
    for day in days:
        total += day.cost
        running.append(total)
    cost_cap = Decimal(agent.monthly_cost_cap)
    return [
        Chart(
            title="Tokens per day, last 30 days",
            bars=_bars(days, tokens, _top(tokens, token_cap), lambda d, v: f"{d}: {v:,} tokens"),
            points="",
            cap_y=_cap_y(token_cap, _top(tokens, token_cap)),
            cap_label=f"daily cap {token_cap:,}",
            summary=f"{sum(tokens):,} tokens in 30 days; the most in a day: {max(tokens):,}.",
        ),
        Chart(
            title="Model cost, running total over the last 30 days",
            bars=[],
            points=_points(running, _top(running, cost_cap)),
            cap_y=_cap_y(cost_cap, _top(running, cost_cap)),
            cap_label=f"monthly cap ${cost_cap:.2f}",
            summary=f"{money(total)} in 30 days.",
        ),
    ]


# A cap more than this many times the busiest value is left off the chart (and said
# so under it), or a month of light use would be a flat line at the bottom.
CAP_OFF_CHART = 4


def _top(values: list[Decimal], cap: Decimal) -> Decimal:
    busiest = max(values, default=Decimal("0"))
    if busiest > 0 and cap > busiest * CAP_OFF_CHART:
        return busiest * Decimal("1.25")
    return max(busiest, cap, Decimal("1e-9")) * Decimal("1.1")


def _cap_y(cap: Decimal, top: Decimal) -> float | None:
    return _y(cap, top) if cap <= top else None


def _y(value: Decimal, top: Decimal) -> float:
    return round(CHART_PAD + float(1 - value / top) * (CHART_H - 2 * CHART_PAD), 1)


def _bars(days, values: list[Decimal], top: Decimal, label) -> list[Bar]:
    step = CHART_W / len(values)
    bars = []
    for index, (day, value) in enumerate(zip(days, values, strict=True)):
        y = _y(value, top)
        bars.append(
            Bar(
                x=round(index * step + 1, 1),
                y=y,
                width=round(step - 2, 1),
                height=round(CHART_H - CHART_PAD - y, 1),
                title=label(day.date.isoformat(), int(value)),
            )
        )
    return bars


def _points(values: list[Decimal], top: Decimal) -> str:
    step = CHART_W / max(1, len(values) - 1)
    return " ".join(f"{round(i * step, 1)},{_y(v, top)}" for i, v in enumerate(values))


# --- Where the money went ----------------------------------------------------------------------


@dataclass(frozen=True)
class Share:
    label: str
    calls: int
    tokens: int
    cost: Decimal

    @property
    def cost_shown(self) -> str:
        return money(self.cost)


def spending_since(agent: Agent, now: dt.datetime | None = None) -> dt.datetime:
    """The start of the period the breakdown covers: the billing period, else 30 days."""
    now = now or timezone.now()
    return agent.period_started_at or now - dt.timedelta(days=CHART_DAYS)


def spending_breakdown(agent: Agent, *, since: dt.datetime) -> dict[str, list[Share]]:
    """Settled model calls since ``since``, by model and by what started them (the chat,
    a schedule, or no run), from the usage ledger."""
    calls = settled_calls(agent).filter(created_at__gte=since)
    sums = {
        "calls": Count("id"),
        "tokens": Sum(F("input_tokens") + F("output_tokens")),
        "cost": Sum("cost"),
    }
    by_model = calls.values("model").annotate(**sums).order_by("-cost", "model")
    by_source = (
        calls.values(
            "run__message__role", "run__message__schedule_id", "run__message__schedule__cron"
        )
        .annotate(**sums)
        .order_by("-cost")
    )
    return {
        "model": [_share(row["model"], row) for row in by_model],
        "source": [_share(_source(row), row) for row in by_source],
    }


def _source(row: dict[str, Any]) -> str:
    role = row["run__message__role"]
    if role == "schedule":
        return f"schedule {row['run__message__schedule__cron'] or '(deleted)'}"
    return "chat" if role == "owner" else "outside any run"


def _share(label: str, row: dict[str, Any]) -> Share:
    return Share(label, row["calls"], row["tokens"] or 0, row["cost"] or Decimal("0"))
