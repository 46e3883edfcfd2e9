"""Schedules: an owner's standing instructions on a cron, fired into the inbox.

Cron expressions are read by ``cronsim`` (by the author of healthchecks.io,
which runs on it): no dependencies, Debian cron's rules including its
daylight-saving behaviour, and a plain-English ``explain()``. ``croniter``
was the other candidate; its maintainer declared it abandoned in 2025 before
it found a new home, and it brings more than we need.

Firing is exactly once per firing time: the beat task claims a due schedule
under a row lock (skipping one another worker holds), stores its message with
the firing time it stands for (unique per schedule and time), and moves
``next_fire_at`` past now in the same transaction. A task that runs twice
finds nothing due; one that runs late fires the latest missed time once
(older missed times are skipped: a morning summary sent three times at noon
helps nobody).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from itertools import islice, pairwise
from typing import Any

from cronsim import CronSim, CronSimError
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.conversation_services import clean_text, post_message
from agents.conversations import Message, MessageRole, Schedule
from agents.models import Agent, AgentStatus, validate_time_zone

# How many upcoming firings validation looks at for the minimum interval: more
# than a day of hourly firings, enough to see every minute a pattern fires on.
_INTERVAL_SAMPLE = 120


def validate_cron(expression: str) -> str:
    """A five-field cron expression, normalised; ValidationError otherwise.

    Firings closer together than ``SCHEDULE_MIN_INTERVAL_MINUTES`` are refused:
    each one costs a model run.
    """
    normalised = " ".join(expression.split())
    if len(normalised.split(" ")) != 5:
        raise ValidationError(
            "Use five fields: minute hour day-of-month month day-of-week, like '30 7 * * 1-5'.",
            code="invalid_cron",
        )
    try:
        times = list(islice(CronSim(normalised, dt.datetime(2026, 1, 1)), _INTERVAL_SAMPLE))
    except (CronSimError, ValueError, StopIteration) as exc:
        raise ValidationError(f"Not a valid cron expression: {exc}.", code="invalid_cron") from exc
    minimum = dt.timedelta(minutes=settings.SCHEDULE_MIN_INTERVAL_MINUTES)
    if any(later - earlier < minimum for earlier, later in pairwise(times)):
        raise ValidationError(
            f"A schedule may fire at most once every {settings.SCHEDULE_MIN_INTERVAL_MINUTES} "
            "minutes.",
            code="cron_too_frequent",
        )
    return normalised


def describe_cron(expression: str) -> str:
    try:
        return CronSim(expression, dt.datetime(2026, 1, 1)).explain()
    except (CronSimError, ValueError):
        return expression


def next_firing(expression: str, time_zone: str, *, after: dt.datetime) -> dt.datetime:
    """The first firing strictly after ``after``, read in ``time_zone``, in UTC."""
    local = after.astimezone(zoneinfo.ZoneInfo(time_zone))
    return next(CronSim(expression, local)).astimezone(dt.UTC)


def latest_firing(expression: str, time_zone: str, *, until: dt.datetime) -> dt.datetime:
    """The last firing at or before ``until``, in UTC."""
    local = (until + dt.timedelta(seconds=1)).astimezone(zoneinfo.ZoneInfo(time_zone))
    return next(CronSim(expression, local, reverse=True)).astimezone(dt.UTC)


def _validated(*, agent: Agent, cron: str, prompt: str) -> tuple[str, str]:
    prompt = clean_text(prompt).strip()
    if not prompt:
        raise ValidationError({"prompt": "A schedule needs a prompt."})
    if len(prompt) > Message.MAX_OWNER_CHARS:
        raise ValidationError(
            {"prompt": f"At most {Message.MAX_OWNER_CHARS} characters."}, code="max_length"
        )
    try:
        cron = validate_cron(cron)
    except ValidationError as exc:
        raise ValidationError({"cron": exc.messages}) from exc
    return cron, prompt


def create_schedule(
    *, agent: Agent, cron: str, prompt: str, enabled: bool = True, now: dt.datetime | None = None
) -> Schedule:
    """Add a schedule (ValidationError on bad input or past the per-agent maximum)."""
    cron, prompt = _validated(agent=agent, cron=cron, prompt=prompt)
    now = now or timezone.now()
    with transaction.atomic():
        # The agent's row lock keeps two concurrent creations from passing the maximum.
        Agent.objects.select_for_update().only("id").get(pk=agent.pk)
        if Schedule.objects.filter(agent=agent).count() >= Schedule.MAX_PER_AGENT:
            raise ValidationError(
                f"An agent may have at most {Schedule.MAX_PER_AGENT} schedules.",
                code="too_many_schedules",
            )
        return Schedule.objects.create(
            agent=agent,
            cron=cron,
            prompt=prompt,
            enabled=enabled,
            next_fire_at=next_firing(cron, agent.time_zone, after=now) if enabled else None,
        )


def update_schedule(
    *, schedule: Schedule, now: dt.datetime | None = None, **changes: Any
) -> Schedule:
    """Change ``cron``, ``prompt`` or ``enabled``; the next firing is worked out again."""
    agent = schedule.agent
    cron, prompt = _validated(
        agent=agent,
        cron=changes.get("cron", schedule.cron),
        prompt=changes.get("prompt", schedule.prompt),
    )
    enabled = changes.get("enabled", schedule.enabled)
    now = now or timezone.now()
    with transaction.atomic():
        row = Schedule.objects.select_for_update().get(pk=schedule.pk)
        row.cron, row.prompt, row.enabled = cron, prompt, enabled
        row.next_fire_at = next_firing(cron, agent.time_zone, after=now) if enabled else None
        row.save(update_fields=["cron", "prompt", "enabled", "next_fire_at", "updated_at"])
    return row


def delete_schedule(*, schedule: Schedule) -> None:
    """Remove a schedule; the messages it fired stay in the conversation."""
    schedule.delete()


def set_instructions(
    *, agent: Agent, instructions: str, time_zone: str, now: dt.datetime | None = None
) -> Agent:
    """Set the owner's standing instructions and time zone (ValidationError if bad).

    A new time zone moves every enabled schedule's next firing to match.
    """
    validate_time_zone(time_zone)
    now = now or timezone.now()
    with transaction.atomic():
        row = Agent.objects.select_for_update().get(pk=agent.pk)
        row.instructions = clean_text(instructions).strip()
        row.time_zone = time_zone
        row.full_clean(validate_unique=False, validate_constraints=False)
        row.save(update_fields=["instructions", "time_zone", "updated_at"])
        for schedule in Schedule.objects.select_for_update().filter(agent=row, enabled=True):
            schedule.next_fire_at = next_firing(schedule.cron, time_zone, after=now)
            schedule.save(update_fields=["next_fire_at", "updated_at"])
    agent.refresh_from_db()
    return agent


def fire_due_schedules(*, now: dt.datetime | None = None) -> int:
    """Fire every schedule that is due at ``now``; returns how many messages it posted.

    A schedule of an agent that is not running (or not paid for) moves on
    without firing: its message would only wait, stale, for the next start.
    """
    now = now or timezone.now()
    due = Schedule.objects.filter(enabled=True, next_fire_at__lte=now).values_list("pk", flat=True)
    return sum(_fire(pk, now) for pk in due)


def _fire(schedule_id: int, now: dt.datetime) -> bool:
    with transaction.atomic():
        # Only the schedule's row: FOR UPDATE would lock the joined agent's row too,
        # and skip the schedule whenever that row is busy (a runtime's poll, an
        # admission), firing it a beat late or, in a test that fires once, never.
        schedule = (
            Schedule.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("agent")
            .filter(pk=schedule_id, enabled=True, next_fire_at__lte=now)
            .first()
        )
        if schedule is None:
            return False  # another worker has it, or it is no longer due
        agent = schedule.agent
        firing = latest_firing(schedule.cron, agent.time_zone, until=now)
        schedule.next_fire_at = next_firing(schedule.cron, agent.time_zone, after=now)
        schedule.save(update_fields=["next_fire_at", "updated_at"])
        if agent.status != AgentStatus.RUNNING or not agent.billing_active:
            return False
        if schedule.last_fired_at is not None and firing <= schedule.last_fired_at:
            return False
        try:
            with transaction.atomic():
                post_message(
                    agent=agent,
                    content=schedule.prompt,
                    role=MessageRole.SCHEDULE,
                    schedule=schedule,
                    scheduled_for=firing,
                )
        except IntegrityError:
            return False  # this firing time is already in the inbox
        schedule.last_fired_at = firing
        schedule.save(update_fields=["last_fired_at"])
    return True
