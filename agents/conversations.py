"""An agent's conversation and the runs that answer it (DESIGN.md: agent API).

The control plane keeps the whole conversation, so a container can be replaced
at any time without losing anything. An owner's message (or a schedule's
firing) is an inbound ``Message`` with a ``Run`` queued for it. The runtime's
long poll hands out the agent's active run, activating the oldest queued one
when there is none; a restarted runtime is handed the same active run again,
with its counters and deadline as they were. The run ends when the agent's
reply is stored (once), or when the control plane stops it at a limit, a kill
or a failure, and then the control plane writes the reply that says why.

At most one run per agent is active (a database constraint), so the gateway
and the tool endpoint charge every call to *that* run: nothing the agent sends
chooses or resets the run its calls count against.

``RunStep`` rows are what the run did, written by the control plane as it
happens (the gateway for model calls, the tool endpoint for tool calls, either
for a refusal); metadata only, never mail or file content.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.db import models

from agents.models import Agent


class MessageRole(models.TextChoices):
    OWNER = "owner", "Owner"
    SCHEDULE = "schedule", "Schedule"
    AGENT = "agent", "Agent"
    SYSTEM = "system", "Safer-Claw"  # a reply the control plane wrote (a run stopped)


class Message(models.Model):
    """One message of the conversation, inbound (owner, schedule) or a reply."""

    MAX_CONTENT_CHARS = 32_000
    MAX_OWNER_CHARS = 8_000  # what an owner (or a schedule's prompt) may send

    id = models.BigAutoField(primary_key=True)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=MessageRole.choices)
    content = models.TextField()
    # For a reply: the run it answers (the inbound message is run.message).
    in_reply_to = models.ForeignKey(
        "Run", null=True, blank=True, on_delete=models.CASCADE, related_name="replies"
    )
    # For a schedule's firing: which schedule, and the firing time it stands for.
    # One message per (schedule, time), so a firing counted twice is stored once.
    schedule = models.ForeignKey(
        "Schedule", null=True, blank=True, on_delete=models.SET_NULL, related_name="messages"
    )
    scheduled_for = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["agent", "created_at"])]
        constraints = [
            models.UniqueConstraint(
                fields=["schedule", "scheduled_for"],
                condition=models.Q(schedule__isnull=False),
                name="one_message_per_schedule_firing",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    ACTIVE = "active", "Running"
    DONE = "done", "Answered"
    STOPPED = "stopped", "Stopped at a limit"
    FAILED = "failed", "Failed"
    CANCELED = "canceled", "Canceled"


RUN_OPEN = (RunStatus.QUEUED, RunStatus.ACTIVE)


class StopReason(models.TextChoices):
    """Why a run ended; the owner's reply names it."""

    COMPLETED = "completed", "Completed"
    MAX_MODEL_STEPS = "max_model_steps", "Max model steps per run"
    MAX_TOOL_CALLS = "max_tool_calls", "Max tool calls per run"
    MAX_RUNTIME = "max_runtime", "Max runtime per run"
    MAX_TOKENS = "max_tokens", "Max tokens per model call"
    MAX_TOOL_CALLS_PER_DAY = "max_tool_calls_per_day", "Max tool calls per day"
    CAP_REACHED = "cap_reached", "A spending cap"
    AGENT_STOPPED = "agent_stopped", "The agent was stopped"
    ERROR = "error", "Error"


class Run(models.Model):
    """One run of the agent loop, begun and identified by the control plane."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="runs")
    message = models.OneToOneField(Message, on_delete=models.CASCADE, related_name="run")
    status = models.CharField(
        max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True
    )
    stop_reason = models.CharField(max_length=32, choices=StopReason.choices, blank=True)
    stop_detail = models.TextField(blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    deadline = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    handed_out = models.PositiveIntegerField(
        default=0, help_text="How often the inbox handed this run out (more than once: a restart)."
    )

    # What the run used, counted by the control plane. The gateway counts model
    # calls (reserved at admission, settled after) and the tool calls the model
    # asked for; the tool endpoint counts the tool calls it performed (reserved
    # the same way). Each is held to the agent's per-run limit on its own, so
    # no tool call is counted twice and neither side can pass the limit.
    model_calls = models.PositiveIntegerField(default=0)
    reserved_model_calls = models.PositiveIntegerField(default=0)
    requested_tool_calls = models.PositiveIntegerField(
        default=0, help_text="Tool-use blocks the model returned (counted by the gateway)."
    )
    tool_calls = models.PositiveIntegerField(
        default=0, help_text="Tool calls the control plane performed (the tool endpoint)."
    )
    reserved_tool_calls = models.PositiveIntegerField(default=0)
    tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal("0"))

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["agent"],
                condition=models.Q(status="active"),
                name="one_active_run_per_agent",
            ),
        ]
        indexes = [models.Index(fields=["agent", "status", "created_at"])]

    def __str__(self) -> str:
        return f"run {self.id} of {self.agent_id} ({self.status})"


class StepKind(models.TextChoices):
    MODEL_CALL = "model_call", "Model call"
    TOOL_CALL = "tool_call", "Tool call"
    REFUSED = "refused", "Refused"
    NOTE = "note", "Note"


class RunStep(models.Model):
    """One thing a run did, as the control plane saw it: metadata, never content."""

    id = models.BigAutoField(primary_key=True)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps")
    kind = models.CharField(max_length=16, choices=StepKind.choices)
    name = models.CharField(max_length=100, help_text="The model or the tool.")
    # Metadata only: argument digest, result size, tokens, cost, latency, refusal reason.
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


class Schedule(models.Model):
    """Standing instructions on a cron: each firing is an inbox message with its run.

    ``cron`` is a five-field expression read in the agent's time zone;
    ``next_fire_at`` (UTC) is when it fires next, None while disabled. The
    beat task claims a due schedule under a row lock and moves ``next_fire_at``
    past now in the same transaction (``agents.conversation_services``).
    """

    MAX_PER_AGENT = 20
    MAX_CRON_CHARS = 100

    id = models.BigAutoField(primary_key=True)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="schedules")
    cron = models.CharField(max_length=MAX_CRON_CHARS)
    prompt = models.TextField()
    enabled = models.BooleanField(default=True)
    next_fire_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_fired_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.cron}: {self.prompt[:40]}"


class Note(models.Model):
    """One entry of an agent's notes, kept by the control plane (the notes.* tools)."""

    MAX_TEXT_CHARS = 2_000
    MAX_PER_AGENT = 200

    id = models.BigAutoField(primary_key=True)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="notes")
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.text[:40]
