"""Reads of the usage ledger (gateway.models.UsageRecord)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Count, F, QuerySet, Sum
from django.db.models.functions import TruncDate

from agents.models import Agent
from gateway.models import UsageRecord, UsageStatus

MAX_USAGE_DAYS = 366


@dataclass(frozen=True)
class DayUsage:
    date: dt.date
    tokens: int
    cost: Decimal
    calls: int


def settled_calls(agent: Agent) -> QuerySet[UsageRecord]:
    """The agent's settled ledger rows: a call still in flight holds a reservation,
    not a cost, and a settled lease's calls are rows of their own (a lease's row
    counts only when the sweeper charged it beyond them)."""
    return UsageRecord.objects.filter(agent=agent, settled_at__isnull=False).exclude(
        status__in=(UsageStatus.PENDING, UsageStatus.LEASE)
    )


def agent_daily_usage(*, agent: Agent, start: dt.date, end: dt.date) -> list[DayUsage]:
    """Tokens (input + output) and cost per UTC day, ``start`` to ``end`` inclusive.

    Counts settled calls only (``settled_calls``). Days without calls are there
    with zeros, so a chart has no gaps.
    """
    if end < start or (end - start).days >= MAX_USAGE_DAYS:
        raise ValueError(f"a range of 1 to {MAX_USAGE_DAYS} days is needed")
    rows = (
        settled_calls(agent)
        .filter(
            created_at__gte=dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC),
            created_at__lte=dt.datetime.combine(end, dt.time.max, tzinfo=dt.UTC),
        )
        .annotate(day=TruncDate("created_at", tzinfo=dt.UTC))
        .values("day")
        .annotate(
            tokens=Sum(F("input_tokens") + F("output_tokens")),
            cost=Sum("cost"),
            calls=Count("id"),
        )
    )
    by_day = {row["day"]: row for row in rows}
    days = []
    for offset in range((end - start).days + 1):
        day = start + dt.timedelta(days=offset)
        row = by_day.get(day, {})
        days.append(
            DayUsage(
                date=day,
                tokens=row.get("tokens") or 0,
                cost=row.get("cost") or Decimal("0"),
                calls=row.get("calls") or 0,
            )
        )
    return days
