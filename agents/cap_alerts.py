"""Mail the owner when an agent's usage passes 50 %, 80 % and 100 % of a cap, once per
threshold per period (the daily token cap's UTC day, the cost cap's billing period).

Beat runs ``send_cap_alerts`` every minute; it reads the counters the gateway keeps
on the agent's row and never touches the gateway's path. A ``CapAlert`` row is
claimed before its mail goes (its unique constraint decides), so concurrent beats
or a re-run never send one twice; a mail that fails leaves its row behind and is
not retried: an alert late or lost is better than a flood.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal

from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone

from agents.models import Agent, AgentStatus, CapAlert

logger = logging.getLogger(__name__)
THRESHOLDS = (50, 80, 100)
WATCHED = (AgentStatus.RUNNING, AgentStatus.PAUSED, AgentStatus.PROVISIONING)


def send_cap_alerts(*, now: dt.datetime | None = None, site_url: str = "") -> int:
    """Send the alerts due now; returns how many were sent."""
    now = now or timezone.now()
    today = now.astimezone(dt.UTC).date()
    half_tokens = Q(tokens_day=today, tokens_today__gte=F("daily_token_cap") / 2)
    half_cost = Q(cost_this_period__gte=F("monthly_cost_cap") / 2)
    agents = Agent.objects.filter(half_tokens | half_cost, status__in=WATCHED).select_related(
        "owner"
    )
    sent = 0
    for agent in agents:
        for cap, used, limit, period in _caps(agent, today):
            for threshold in _passed(used, limit):
                sent += _alert_once(agent, cap, threshold, period, used, limit, site_url)
    return sent


def _caps(agent: Agent, today: dt.date):
    tokens = agent.tokens_today if agent.tokens_day == today else 0
    period = agent.period_started_at.isoformat() if agent.period_started_at else "first"
    yield "daily_token_cap", Decimal(tokens), Decimal(agent.daily_token_cap), today.isoformat()
    yield "monthly_cost_cap", agent.cost_this_period, agent.monthly_cost_cap, period


def _passed(used: Decimal, limit: Decimal) -> list[int]:
    if limit <= 0:
        return []
    return [t for t in THRESHOLDS if used * 100 >= limit * t]


def _alert_once(agent, cap, threshold, period, used, limit, site_url) -> int:
    try:
        with transaction.atomic():
            CapAlert.objects.create(
                agent=agent, cap=cap, threshold=threshold, period=period, used=str(used)
            )
    except IntegrityError:
        return 0  # sent before, for this period
    what = _describe(cap, used, limit)
    page = site_url.rstrip("/") + reverse("dashboard:agent", kwargs={"agent_id": agent.pk})
    after = (
        "It has been paused so it cannot spend more; it resumes when the cap resets."
        if threshold >= 100
        else "At 100 % it is paused until the cap resets."
    )
    try:
        send_mail(
            subject=f"Safer-Claw: {agent.name} has used {threshold} % of its {_name(cap)}",
            message=f"Your agent {agent.name} has used {what}.\n\n{after}\n\n"
            f"See its usage, or lower the cap: {page}",
            from_email=None,
            recipient_list=[agent.owner.email],
        )
    except OSError as exc:
        logger.warning("cap alert for agent %s not sent: %s", agent.pk, exc)
        return 0
    return 1


def _name(cap: str) -> str:
    return "daily token cap" if cap == "daily_token_cap" else "monthly cost cap"


def _describe(cap: str, used: Decimal, limit: Decimal) -> str:
    if cap == "daily_token_cap":
        return f"{int(used):,} of its {int(limit):,} tokens today (UTC)"
    return f"${used:.2f} of its ${limit:.2f} model cost this billing period"
