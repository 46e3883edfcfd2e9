"""Schedules: cron in the owner's time zone, each firing once into the inbox, with a
controllable clock (``now``)."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from agents.conversations import Message, MessageRole, Run, RunStatus, Schedule
from agents.models import Agent, AgentStatus
from agents.schedule_services import (
    create_schedule,
    fire_due_schedules,
    next_firing,
    set_instructions,
    update_schedule,
    validate_cron,
)
from agents.tests.conftest import make_running

pytestmark = pytest.mark.django_db

UTC = dt.UTC


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


@pytest.fixture
def paris(live):
    Agent.objects.filter(pk=live.agent.pk).update(time_zone="Europe/Paris")
    live.agent.refresh_from_db()
    return live


def test_a_weekday_schedule_fires_at_its_local_time(paris):
    # Monday 2026-03-02, 06:00 UTC = 07:00 in Paris (winter time).
    schedule = create_schedule(
        agent=paris.agent, cron="30 7 * * 1-5", prompt="Summarise my day.", now=at(2026, 3, 2, 6)
    )
    assert schedule.next_fire_at == at(2026, 3, 2, 6, 30)

    assert fire_due_schedules(now=at(2026, 3, 2, 6, 29)) == 0
    assert fire_due_schedules(now=at(2026, 3, 2, 6, 30, 5)) == 1

    message = Message.objects.get()
    assert (message.role, message.content) == (MessageRole.SCHEDULE, "Summarise my day.")
    assert message.scheduled_for == at(2026, 3, 2, 6, 30)
    assert message.run.status == RunStatus.QUEUED
    schedule.refresh_from_db()
    assert schedule.next_fire_at == at(2026, 3, 3, 6, 30)
    assert schedule.last_fired_at == at(2026, 3, 2, 6, 30)


def test_the_firing_time_follows_daylight_saving(paris):
    # Paris moves to summer time on 2026-03-29: 07:30 local is then 05:30 UTC.
    assert next_firing("30 7 * * *", "Europe/Paris", after=at(2026, 3, 28, 7)) == at(
        2026, 3, 29, 5, 30
    )
    assert next_firing("30 7 * * *", "Europe/Paris", after=at(2026, 3, 27, 7)) == at(
        2026, 3, 28, 6, 30
    )


def test_a_task_that_runs_twice_fires_once(paris):
    create_schedule(agent=paris.agent, cron="0 9 * * *", prompt="Hi", now=at(2026, 3, 2))
    assert fire_due_schedules(now=at(2026, 3, 2, 8, 0, 1)) == 1
    assert fire_due_schedules(now=at(2026, 3, 2, 8, 0, 1)) == 0
    assert fire_due_schedules(now=at(2026, 3, 2, 8, 0, 40)) == 0
    assert Message.objects.count() == 1


def test_a_late_task_fires_the_latest_missed_time_once(paris):
    create_schedule(agent=paris.agent, cron="0 * * * *", prompt="Hourly", now=at(2026, 3, 2))
    # Beat was down from 00:00 to 05:20 UTC: five firings missed, one message.
    assert fire_due_schedules(now=at(2026, 3, 2, 5, 20)) == 1
    [message] = Message.objects.all()
    assert message.scheduled_for == at(2026, 3, 2, 5)
    assert Schedule.objects.get().next_fire_at == at(2026, 3, 2, 6)


@pytest.mark.django_db(transaction=True)
def test_two_workers_at_once_fire_once(agent):
    live = make_running(agent)
    create_schedule(agent=live.agent, cron="0 9 * * *", prompt="Hi", now=at(2026, 3, 2))
    barrier = threading.Barrier(4)
    fired: list[int] = []

    def work() -> None:
        barrier.wait()
        fired.append(fire_due_schedules(now=at(2026, 3, 2, 9, 0, 1)))
        connection.close()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(fired) == 1
    assert Message.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_schedule_fires_while_its_agents_row_is_busy(agent):
    """A runtime's poll or a gateway admission holds the agent's row for a moment;
    the firing must not skip the schedule for it."""
    live = make_running(agent)
    create_schedule(agent=live.agent, cron="0 9 * * *", prompt="Hi", now=at(2026, 3, 2))
    held, release = threading.Event(), threading.Event()

    def hold_the_agents_row() -> None:
        with connection.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute(
                "SELECT 1 FROM agents_agent WHERE id = %s FOR NO KEY UPDATE", [live.agent.pk]
            )
            held.set()
            release.wait(10)
            cursor.execute("COMMIT")
        connection.close()

    holder = threading.Thread(target=hold_the_agents_row)
    holder.start()
    try:
        assert held.wait(10)
        assert fire_due_schedules(now=at(2026, 3, 2, 9, 0, 1)) == 1
    finally:
        release.set()
        holder.join()
    assert Message.objects.filter(role=MessageRole.SCHEDULE).count() == 1


def test_a_firing_already_in_the_inbox_is_not_stored_twice(paris):
    schedule = create_schedule(agent=paris.agent, cron="0 9 * * *", prompt="Hi", now=at(2026, 3, 2))
    fire_due_schedules(now=at(2026, 3, 2, 8, 0, 1))
    # As if the claim were lost (say, a restore from backup) and the same time came due again.
    Schedule.objects.filter(pk=schedule.pk).update(
        next_fire_at=at(2026, 3, 2, 8), last_fired_at=None
    )
    assert fire_due_schedules(now=at(2026, 3, 2, 8, 0, 2)) == 0
    assert Message.objects.count() == 1


@pytest.mark.parametrize("status", [AgentStatus.STOPPED, AgentStatus.PAUSED])
def test_an_agent_that_is_not_running_skips_the_firing(paris, status):
    create_schedule(agent=paris.agent, cron="0 9 * * *", prompt="Hi", now=at(2026, 3, 2))
    Agent.objects.filter(pk=paris.agent.pk).update(status=status)
    assert fire_due_schedules(now=at(2026, 3, 2, 8, 0, 1)) == 0
    assert not Message.objects.exists()
    assert Schedule.objects.get().next_fire_at == at(2026, 3, 3, 8)


def test_a_disabled_schedule_does_not_fire_and_reenabling_starts_from_now(paris):
    schedule = create_schedule(
        agent=paris.agent, cron="0 9 * * *", prompt="Hi", enabled=False, now=at(2026, 3, 2)
    )
    assert schedule.next_fire_at is None
    assert fire_due_schedules(now=at(2026, 3, 5)) == 0
    schedule = update_schedule(schedule=schedule, enabled=True, now=at(2026, 3, 5))
    assert schedule.next_fire_at == at(2026, 3, 5, 8)


def test_changing_the_time_zone_moves_the_next_firing(paris):
    schedule = create_schedule(agent=paris.agent, cron="0 9 * * *", prompt="Hi", now=at(2026, 3, 2))
    set_instructions(
        agent=paris.agent, instructions="", time_zone="America/New_York", now=at(2026, 3, 2)
    )
    schedule.refresh_from_db()
    assert schedule.next_fire_at == at(2026, 3, 2, 14)


@pytest.mark.parametrize(
    ("cron", "code"),
    [
        ("* * * * *", "cron_too_frequent"),
        ("*/2 * * * *", "cron_too_frequent"),
        ("0,3 9 * * *", "cron_too_frequent"),
        ("0 9 * *", "invalid_cron"),
        ("0 0 9 * * *", "invalid_cron"),  # seconds are not allowed
        ("61 9 * * *", "invalid_cron"),
        ("0 9 31 2 *", "invalid_cron"),
        ("@daily", "invalid_cron"),
    ],
)
def test_bad_or_too_frequent_expressions_are_refused(cron, code):
    with pytest.raises(ValidationError) as excinfo:
        validate_cron(cron)
    assert excinfo.value.code == code


@pytest.mark.parametrize("cron", ["30 7 * * 1-5", "*/5 * * * *", "0 9 1 * *", "0  9 * *   MON"])
def test_good_expressions_pass_normalised(cron):
    assert validate_cron(cron) == " ".join(cron.split())


def test_an_agent_has_at_most_twenty_schedules(paris):
    for minute in range(Schedule.MAX_PER_AGENT):
        create_schedule(agent=paris.agent, cron=f"{minute} 9 * * *", prompt="x")
    with pytest.raises(ValidationError):
        create_schedule(agent=paris.agent, cron="30 9 * * *", prompt="x")


def test_a_scheduled_run_is_handed_out_like_an_owners(client, paris):
    create_schedule(agent=paris.agent, cron="0 9 * * *", prompt="Morning brief", now=at(2026, 3, 2))
    fire_due_schedules(now=at(2026, 3, 2, 8, 0, 1))
    body = client.get("/agent-api/v1/inbox?wait=0", headers=paris.auth).json()
    assert body["message"] == {
        **body["message"],
        "role": "schedule",
        "content": "Morning brief",
    }
    assert Run.objects.get().status == RunStatus.ACTIVE
