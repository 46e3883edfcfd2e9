"""An agent's conversation: messages in, runs handed out, replies stored once, runs stopped.

The rules of ``agents.conversations`` in one place:

* :func:`post_message` puts a message in the inbox with a queued run;
* :func:`hand_out_run` gives the runtime the agent's active run again (a
  restarted runtime), or activates the oldest queued one;
* :func:`store_reply` ends a run with the agent's reply, exactly once;
* :func:`stop_run` ends a run the control plane stops (a limit, its deadline)
  and :func:`end_open_runs` those of an agent that leaves ``running``; both
  write the reply that tells the owner why.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from agents.conversations import (
    RUN_OPEN,
    Message,
    MessageRole,
    Run,
    RunStatus,
    RunStep,
    StepKind,
    StopReason,
)
from agents.inbox_wakeups import notify_inbox
from agents.models import Agent, AgentStatus

# Statuses after which an agent's queued messages are dropped, not kept for later.
DROPS_QUEUED = (AgentStatus.KILLED, AgentStatus.DELETED)


# An owner may write to an agent that runs or will run again; the message waits.
ACCEPTS_MESSAGES = (
    AgentStatus.RUNNING,
    AgentStatus.PROVISIONING,
    AgentStatus.STOPPED,
    AgentStatus.PAUSED,
)
MAX_QUEUED_RUNS = 20


class InboxFull(Exception):
    """Too many messages are already waiting for the agent."""


class AgentNotServing(Exception):
    """The agent may not be handed work: it is not running, or not paid for."""


class RunNotFound(Exception):
    """No run with this id belongs to the agent."""


class RunEnded(Exception):
    """The run is no longer active: its reply (if any) came too late."""

    def __init__(self, run: Run) -> None:
        self.run = run
        if run.stop_reason:
            why = f"it has ended ({run.status}: {run.get_stop_reason_display()})"
        else:
            why = f"it is {run.status}, not active"
        super().__init__(f"run {run.id} takes no reply: {why}")


def clean_text(value: str) -> str:
    """Text fit to store: PostgreSQL refuses NUL characters, so they go."""
    return value.replace("\x00", "")


# --- Inbox ------------------------------------------------------------------------------


def post_message(
    *, agent: Agent, content: str, role: str = MessageRole.OWNER, **fields: Any
) -> Message:
    """Put ``content`` in the agent's inbox with a run queued for it; wake its poll.

    ``fields`` are other Message fields (a schedule's ``schedule`` and
    ``scheduled_for``). Length is the caller's to validate.
    """
    with transaction.atomic():
        message = Message.objects.create(
            agent=agent, role=role, content=clean_text(content), **fields
        )
        Run.objects.create(agent=agent, message=message)
        notify_inbox(agent.pk)
    return message


def send_owner_message(*, agent: Agent, content: str) -> Message:
    """The owner's message into the inbox. Raises AgentNotServing for an agent that
    will not run again as it is (killed, failed, unpaid), InboxFull past
    ``MAX_QUEUED_RUNS`` waiting."""
    if agent.status not in ACCEPTS_MESSAGES:
        raise AgentNotServing(f"agent is {agent.status}; start it to send it messages")
    queued = Run.objects.filter(agent_id=agent.pk, status=RunStatus.QUEUED).count()
    if queued >= MAX_QUEUED_RUNS:
        raise InboxFull(f"{queued} messages are already waiting for this agent")
    return post_message(agent=agent, content=content, role=MessageRole.OWNER)


def hand_out_run(*, agent: Agent, now: dt.datetime | None = None) -> Run | None:
    """The run the runtime should work on now, or None when the inbox is empty.

    The agent's active run is handed out again as it is (``handed_out`` + 1,
    counters and deadline unchanged); one past its deadline is stopped first.
    Otherwise the oldest queued run becomes active, with its deadline set from
    ``max_runtime_seconds``. Raises AgentNotServing unless the agent is running
    and paid for.
    """
    if not Run.objects.filter(agent_id=agent.pk, status__in=RUN_OPEN).exists():
        return None  # the common idle case: no lock, one cheap query
    now = now or timezone.now()
    with transaction.atomic():
        # The agent's row lock orders this against lifecycle changes, which end runs.
        row = (
            Agent.objects.select_for_update()
            .only("id", "status", "billing_active", "max_runtime_seconds")
            .get(pk=agent.pk)
        )
        if row.status != AgentStatus.RUNNING or not row.billing_active:
            raise AgentNotServing(f"agent is {row.status}")
        run = Run.objects.filter(agent_id=row.pk, status=RunStatus.ACTIVE).first()
        if run is not None and run.deadline is not None and run.deadline <= now:
            _stop(run, StopReason.MAX_RUNTIME, now=now)
            run = None
        if run is not None:
            Run.objects.filter(pk=run.pk).update(handed_out=F("handed_out") + 1)
            run.handed_out += 1
            return run
        run = (
            Run.objects.select_for_update()
            .filter(agent_id=row.pk, status=RunStatus.QUEUED)
            .order_by("created_at")
            .first()
        )
        if run is None:
            return None
        run.status = RunStatus.ACTIVE
        run.started_at = now
        run.deadline = now + dt.timedelta(seconds=row.max_runtime_seconds)
        run.handed_out = 1
        run.save(update_fields=["status", "started_at", "deadline", "handed_out"])
        return run


def recent_history(run: Run, *, limit: int, max_chars: int) -> list[Message]:
    """The conversation so far, oldest first, bounded in count and size: what the
    owner (or a schedule) said and the agent answered, without ``run``'s own
    message, messages still waiting for their turn, or the control plane's
    notices (those are for the owner, not the model)."""
    earlier = (
        Message.objects.filter(agent_id=run.agent_id)
        .exclude(pk=run.message_id)
        .exclude(role=MessageRole.SYSTEM)
        .exclude(run__status__in=RUN_OPEN)
        .order_by("-id")[:limit]
    )
    kept: list[Message] = []
    size = 0
    for message in earlier:
        size += len(message.content)
        if size > max_chars:
            break
        kept.append(message)
    return kept[::-1]


# --- Ending runs -----------------------------------------------------------------------------


def store_reply(
    *,
    agent: Agent,
    run_id: Any,
    content: str,
    stop_reason: str = StopReason.COMPLETED,
    account: dict[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> Message:
    """Store the agent's reply to its run and end the run ``done``; exactly once.

    A retry returns the reply already stored. ``stop_reason`` and ``account``
    are the runtime's own report of why it stopped and what it did; they are
    kept as such (a RunStep note), while the run's counters stay the control
    plane's. Raises RunNotFound (not this agent's run) or RunEnded (the
    control plane ended it first, or its deadline has passed).
    """
    now = now or timezone.now()
    with transaction.atomic():
        run = Run.objects.select_for_update().filter(pk=run_id, agent_id=agent.pk).first()
        if run is None:
            raise RunNotFound(run_id)
        stored = run.replies.filter(role=MessageRole.AGENT).first()
        if stored is not None:
            return stored
        if run.status == RunStatus.ACTIVE and run.deadline is not None and run.deadline <= now:
            _stop(run, StopReason.MAX_RUNTIME, now=now)  # kept: the refusal comes after commit
        if run.status == RunStatus.ACTIVE:
            return _end_with_reply(run, content, stop_reason, account or {}, now)
    raise RunEnded(run)


def _end_with_reply(
    run: Run, content: str, stop_reason: str, account: dict[str, Any], now: dt.datetime
) -> Message:
    reply = Message.objects.create(
        agent_id=run.agent_id,
        role=MessageRole.AGENT,
        content=clean_text(content),
        in_reply_to=run,
    )
    RunStep.objects.create(
        run=run,
        kind=StepKind.NOTE,
        name="runtime",
        detail={"reported_stop_reason": stop_reason, **account},
    )
    run.status = RunStatus.DONE
    run.stop_reason = stop_reason
    run.stop_detail = "" if stop_reason == StopReason.COMPLETED else "reported by the runtime"
    run.finished_at = now
    run.save(update_fields=["status", "stop_reason", "stop_detail", "finished_at"])
    return reply


def stop_run(
    *,
    run_id: Any,
    reason: str,
    detail: str = "",
    status: str = RunStatus.STOPPED,
    now: dt.datetime | None = None,
) -> bool:
    """End an open run the control plane stops, with a reply telling the owner why.

    For a limit reached (the tool endpoint, the gateway) or a deadline passed.
    Returns False when the run had already ended (nothing changes).
    """
    with transaction.atomic():
        # The run's row only: locking the agent's after it would invert the gateway's
        # order (agent, then run) and deadlock with a call being admitted.
        run = (
            Run.objects.select_for_update(of=("self",))
            .select_related("agent")
            .filter(pk=run_id, status__in=RUN_OPEN)
            .first()
        )
        if run is None:
            return False
        _stop(run, reason, detail=detail, status=status, now=now)
    return True


def end_open_runs(*, agent: Agent, reason: str) -> int:
    """End the runs of an agent that has just left ``running``; returns how many.

    Called by ``Agent.transition`` inside its locked transaction, so every path
    out of ``running`` (stop, pause, kill, delete, failure) goes through it.
    The active run is canceled; queued ones wait for the agent to run again,
    unless it was killed or deleted.
    """
    if agent.status == AgentStatus.RUNNING:
        return 0
    statuses = RUN_OPEN if agent.status in DROPS_QUEUED else (RunStatus.ACTIVE,)
    ended = 0
    for run in Run.objects.select_for_update().filter(agent_id=agent.pk, status__in=statuses):
        run.agent = agent
        detail = f"the agent was {agent.get_status_display().lower()}"
        _stop(
            run,
            StopReason.AGENT_STOPPED,
            detail=f"{detail}: {reason}" if reason else detail,
            status=RunStatus.CANCELED,
        )
        ended += 1
    return ended


def expire_overdue_runs(*, now: dt.datetime | None = None) -> int:
    """Stop every active run past its deadline (the beat task); returns how many."""
    now = now or timezone.now()
    overdue = Run.objects.filter(status=RunStatus.ACTIVE, deadline__lte=now).values_list(
        "pk", flat=True
    )
    return sum(stop_run(run_id=pk, reason=StopReason.MAX_RUNTIME, now=now) for pk in overdue)


def _stop(
    run: Run,
    reason: str,
    *,
    detail: str = "",
    status: str = RunStatus.STOPPED,
    now: dt.datetime | None = None,
) -> None:
    """End ``run`` (locked by the caller) and write the owner's reply that says why."""
    run.status = status
    run.stop_reason = reason
    run.stop_detail = detail
    run.finished_at = now or timezone.now()
    run.save(update_fields=["status", "stop_reason", "stop_detail", "finished_at"])
    Message.objects.create(
        agent_id=run.agent_id,
        role=MessageRole.SYSTEM,
        content=stop_notice(run.agent, reason, detail),
        in_reply_to=run,
    )


def stop_notice(agent: Agent, reason: str, detail: str = "") -> str:
    """What the owner reads when the control plane ends a run."""
    limits = {
        StopReason.MAX_RUNTIME: ("time", f"{agent.max_runtime_seconds} s", "max runtime per run"),
        StopReason.MAX_TOOL_CALLS: (
            "tool calls",
            f"{agent.max_tool_calls_per_run}",
            "max tool calls per run",
        ),
        StopReason.MAX_TOOL_CALLS_PER_DAY: (
            "tool calls today",
            f"{agent.max_tool_calls_per_day}",
            "max tool calls per day",
        ),
        StopReason.MAX_MODEL_STEPS: (
            "model calls",
            f"{agent.max_model_steps_per_run}",
            "max model steps per run",
        ),
    }
    if reason in limits:
        what, limit, setting = limits[reason]
        text = f"Stopped: this run reached its limit of {limit} {what} ({setting})"
        return f"{text}: {detail}" if detail else f"{text}."
    label = StopReason(reason).label if reason in StopReason.values else reason
    if reason == StopReason.AGENT_STOPPED:
        return f"Canceled before an answer: {detail or label}."
    return f"Stopped ({label}){': ' + detail if detail else '.'}"
