"""Agents, their lifecycle, and the append-only audit trail of its changes."""

from __future__ import annotations

import datetime as dt
import re
import uuid
import zoneinfo
from decimal import Decimal
from functools import cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import (
    MaxLengthValidator,
    MaxValueValidator,
    MinValueValidator,
    RegexValidator,
)
from django.db import models, transaction
from django.utils import timezone

from droplets.models import Droplet
from safer_claw.fields import EncryptedJSONField, EncryptedTextField

MEMORY_LIMIT = re.compile(r"^([1-9][0-9]{0,6})([mg])$")
MIN_MEMORY_BYTES = 16 * 1024**2  # below this the runtime cannot start Python
MAX_INSTRUCTIONS_CHARS = 8_000


def memory_limit_bytes(value: str) -> int:
    """Bytes in a Docker-style memory limit such as ``512m`` or ``1g``."""
    match = MEMORY_LIMIT.match(value)
    if not match:
        raise ValueError(f"invalid memory limit {value!r}")
    number, unit = match.groups()
    return int(number) * (1024**2 if unit == "m" else 1024**3)


def validate_memory_limit(value: str) -> None:
    if not MEMORY_LIMIT.match(value or ""):
        raise ValidationError(
            "Memory limit must be a whole number of megabytes or gigabytes, like 512m or 1g.",
            code="invalid_memory_limit",
        )
    if memory_limit_bytes(value) < MIN_MEMORY_BYTES:
        raise ValidationError("Memory limit must be at least 16m.", code="memory_too_small")


@cache
def _time_zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def validate_time_zone(value: str) -> None:
    """An IANA time zone name this machine knows, such as ``Europe/Paris``."""
    if value not in _time_zone_names():
        raise ValidationError(
            "Use an IANA time zone name, like Europe/Paris or America/New_York.",
            code="invalid_time_zone",
        )


class AgentStatus(models.TextChoices):
    PENDING_PAYMENT = "pending_payment", "Pending payment"
    PROVISIONING = "provisioning", "Provisioning"
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"
    PAUSED = "paused", "Paused"
    KILLED = "killed", "Killed"
    FAILED = "failed", "Failed"
    DELETED = "deleted", "Deleted"


S = AgentStatus
# DESIGN.md's lifecycle. A killed agent leaves `killed` only by an explicit start
# from its owner or an operator; `deleted` is final.
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    S.PENDING_PAYMENT: frozenset({S.PROVISIONING, S.KILLED, S.DELETED}),
    S.PROVISIONING: frozenset({S.RUNNING, S.FAILED, S.PAUSED, S.KILLED, S.DELETED}),
    S.RUNNING: frozenset({S.STOPPED, S.PAUSED, S.KILLED, S.FAILED, S.DELETED}),
    S.STOPPED: frozenset({S.PROVISIONING, S.RUNNING, S.PAUSED, S.KILLED, S.DELETED}),
    S.PAUSED: frozenset({S.PROVISIONING, S.RUNNING, S.STOPPED, S.KILLED, S.DELETED}),
    # Not to `stopped`: its container holds the token the kill revoked, so a
    # killed agent only runs again through a fresh deploy (start_agent).
    S.KILLED: frozenset({S.PROVISIONING, S.RUNNING, S.DELETED}),
    S.FAILED: frozenset({S.PROVISIONING, S.KILLED, S.DELETED}),
    S.DELETED: frozenset(),
}


# The states in which an agent runs, or is being made to run: it may enter them
# only while something pays for it (DESIGN.md trust boundary 5).
PAID_STATES = frozenset({S.PROVISIONING, S.RUNNING})


class InvalidTransition(Exception):
    """The agent's current state does not allow the requested change."""

    def __init__(self, current: str, requested: str, message: str = "") -> None:
        self.current = current
        self.requested = requested
        super().__init__(message or f"agent is {current}; it cannot go to {requested}")


class PaymentRequired(InvalidTransition):
    """The change would run the agent, and nothing pays for it (``billing_active`` is off)."""

    def __init__(self, current: str, requested: str) -> None:
        super().__init__(
            current,
            requested,
            f"agent is {current}; it cannot go to {requested} because nothing pays for it: "
            "its subscription is not active",
        )


class AIProvider(models.TextChoices):
    OPENAI = "openai", "OpenAI"
    ANTHROPIC = "anthropic", "Anthropic"


class AgentLimits(models.Model):
    """What an agent may use: its container's limits, guardrails and caps.

    An agent has them; a billing plan grants them (billing.Plan), so both
    take this one definition.
    """

    # Container limits (DESIGN.md trust boundary 4).
    cpu_limit = models.DecimalField(
        "CPU limit (cores)",
        max_digits=4,
        decimal_places=2,
        default=Decimal("0.50"),
        validators=[MinValueValidator(Decimal("0.01")), MaxValueValidator(Decimal("64"))],
    )
    memory_limit = models.CharField(
        max_length=12, default="512m", validators=[validate_memory_limit]
    )
    pids_limit = models.PositiveIntegerField(
        default=100, validators=[MinValueValidator(8), MaxValueValidator(4096)]
    )
    # Guardrails, enforced by the gateway and the tool gateway.
    max_tokens_per_request = models.PositiveIntegerField(
        default=4096, validators=[MinValueValidator(1)]
    )
    max_model_steps_per_run = models.PositiveIntegerField(
        default=20, validators=[MinValueValidator(1)]
    )
    max_tool_calls_per_run = models.PositiveIntegerField(default=20)
    max_runtime_seconds = models.PositiveIntegerField(
        "max runtime per run (s)", default=600, validators=[MinValueValidator(1)]
    )
    max_tool_calls_per_day = models.PositiveIntegerField(default=500)
    max_requests_per_minute = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(1)]
    )
    allowed_tools = models.JSONField(
        default=list,
        blank=True,
        help_text="Tool names the agent may declare or call, e.g. calendar.list_events.",
    )

    # Caps. Money is in US dollars.
    daily_token_cap = models.PositiveBigIntegerField(default=200_000)
    monthly_cost_cap = models.DecimalField(
        "monthly model cost cap (USD)",
        max_digits=10,
        decimal_places=2,
        default=Decimal("10.00"),
        validators=[MinValueValidator(Decimal("0"))],
    )

    class Meta:
        abstract = True

    @classmethod
    def limit_field_names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in AgentLimits._meta.fields)


class Agent(AgentLimits):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="agents"
    )
    name = models.CharField(
        max_length=64,
        validators=[
            RegexValidator(
                r"^[A-Za-z0-9][A-Za-z0-9 _.-]*$",
                "Use letters, digits, spaces, '.', '_' or '-', starting with a letter or digit.",
            )
        ],
    )
    status = models.CharField(
        max_length=20, choices=AgentStatus.choices, default=AgentStatus.PENDING_PAYMENT
    )
    status_reason = models.TextField(blank=True)
    # Whether what pays for the agent is active (DESIGN.md trust boundary 5).
    # Written by billing alone; Agent.transition reads it under the row lock.
    billing_active = models.BooleanField(default=False)

    droplet = models.ForeignKey(
        Droplet, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    container_id = models.CharField(max_length=64, blank=True)

    ai_provider = models.CharField(
        max_length=16, choices=AIProvider.choices, default=AIProvider.OPENAI
    )
    ai_api_key = EncryptedTextField("AI provider key", editable=False)
    integrations_config = EncryptedJSONField(editable=False)
    # The owner's own secret for the kill switch webhook (DESIGN.md).
    kill_secret = EncryptedTextField(editable=False)

    # The owner's standing instructions and time zone, handed to the runtime
    # with every run: the instructions sit below the operator's system prompt,
    # in their own delimited section; schedules fire in the time zone.
    instructions = models.TextField(
        blank=True, validators=[MaxLengthValidator(MAX_INSTRUCTIONS_CHARS)]
    )
    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone])

    # Container hardening (DESIGN.md trust boundary 4); the limits are in AgentLimits.
    read_only_root = models.BooleanField("read-only root filesystem", default=True)
    drop_all_capabilities = models.BooleanField(default=True)

    # The caps' running counters (the caps are in AgentLimits). Money is in US dollars.
    tokens_today = models.PositiveBigIntegerField(default=0)
    tokens_day = models.DateField(null=True, blank=True, help_text="UTC day tokens_today counts.")
    cost_this_period = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal("0"))
    tool_calls_today = models.PositiveIntegerField(default=0)
    # Worst-case spend of model calls in flight (the gateway reserves before
    # forwarding and settles after), so concurrent calls cannot pass a cap.
    reserved_tokens = models.PositiveBigIntegerField(default=0)
    reserved_cost = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal("0"))
    # Tool calls that model calls in flight may still return, held against
    # max_tool_calls_per_day like reserved_tokens against the token cap.
    reserved_tool_calls = models.PositiveIntegerField(default=0)
    # Tool calls the tool endpoint performed today (UTC), held against
    # max_tool_calls_per_day apart from the calls the model asked for
    # (tool_calls_today, the gateway's), on a day of their own so neither
    # side's day roll resets the other's counters.
    performed_tool_calls_today = models.PositiveIntegerField(default=0)
    performed_tool_calls_day = models.DateField(null=True, blank=True)
    # Model calls made outside any run get a per-UTC-day allowance (tokens_day's
    # day) with the per-run limits, so dropping out of a run resets nothing.
    model_calls_outside_runs_today = models.PositiveIntegerField(default=0)
    tool_calls_outside_runs_today = models.PositiveIntegerField(default=0)
    reserved_model_calls_outside_runs = models.PositiveIntegerField(default=0)
    # Model calls admitted in the current minute (unix time // 60), counted on
    # the row the gateway's reservation locks anyway.
    rate_minute = models.BigIntegerField(default=0)
    rate_count = models.PositiveIntegerField(default=0)
    period_started_at = models.DateTimeField(null=True, blank=True)

    last_activity_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        # The kill switch from admin; "change agent" does not imply it.
        permissions = [("kill_agent", "Can kill agents (kill switch)")]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "name"],
                condition=~models.Q(status="deleted"),
                name="agent_name_unique_per_owner",
                violation_error_message="You already have an agent with this name.",
            ),
            models.CheckConstraint(condition=models.Q(cpu_limit__gt=0), name="agent_cpu_positive"),
            models.CheckConstraint(
                condition=models.Q(monthly_cost_cap__gte=0), name="agent_cost_cap_not_negative"
            ),
            models.CheckConstraint(
                condition=models.Q(cost_this_period__gte=0), name="agent_cost_not_negative"
            ),
            models.CheckConstraint(
                condition=models.Q(reserved_cost__gte=0), name="agent_reserved_cost_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"

    def clean(self) -> None:
        if self.droplet_id and self.cpu_limit is not None and self.cpu_limit > self.droplet.vcpus:
            raise ValidationError(
                {"cpu_limit": f"{self.droplet.name} has only {self.droplet.vcpus} vCPU(s)."}
            )

    @property
    def memory_limit_bytes(self) -> int:
        return memory_limit_bytes(self.memory_limit)

    def check_paid_for(self, to: str) -> None:
        """Raise PaymentRequired if going to ``to`` would run an agent nothing pays for.

        The one rule of DESIGN.md's trust boundary 5. ``transition`` applies it
        under the row lock, so every path to a container goes through it; a
        service may also ask before it touches a droplet.
        """
        if to in PAID_STATES and not self.billing_active:
            raise PaymentRequired(self.status, to)

    def runtime_alive(self, now: dt.datetime | None = None) -> bool:
        """Whether the runtime was heard from lately. It polls the inbox at least every
        AGENT_INBOX_WAIT_SECONDS (and heartbeats during a run): this is its health check."""
        if self.status != AgentStatus.RUNNING or self.last_activity_at is None:
            return False
        now = now or timezone.now()
        return now - self.last_activity_at <= dt.timedelta(seconds=settings.AGENT_LIVENESS_SECONDS)

    def transition(
        self,
        to: str,
        *,
        actor: Any = None,
        source: str = "system",
        reason: str = "",
        allowed_from: frozenset[str] | None = None,
        **changes: Any,
    ) -> bool:
        """Move to ``to`` under a row lock, recording an AgentEvent.

        Returns False (and records nothing) when the agent is already in ``to``,
        so a retried task or a redelivered webhook changes nothing. Raises
        InvalidTransition when the lifecycle (or ``allowed_from``, for actions
        narrower than the lifecycle) forbids the change. ``changes`` are other
        fields saved in the same locked update (e.g. ``container_id``). Raises
        PaymentRequired (an InvalidTransition) for a move to, or a stay in,
        `provisioning` or `running` while ``billing_active`` is off.
        """
        with transaction.atomic():
            row = Agent.objects.select_for_update().get(pk=self.pk)
            if row.status == to:
                row.check_paid_for(to)  # a deploy under way goes no further either
                self._sync_from(row)
                return False
            permitted = ALLOWED_TRANSITIONS[row.status]
            if allowed_from is not None and row.status not in allowed_from:
                permitted = frozenset()
            if to not in permitted:
                raise InvalidTransition(row.status, to)
            row.check_paid_for(to)
            AgentEvent.objects.create(
                agent=row,
                actor=actor,
                source=source,
                from_status=row.status,
                to_status=to,
                reason=reason,
            )
            row.status = to
            row.status_reason = reason
            for name, value in changes.items():
                setattr(row, name, value)
            row.save(update_fields=["status", "status_reason", "updated_at", *changes])
            # Every way out of `running` ends the agent's runs, in this transaction.
            from agents.conversation_services import end_open_runs

            end_open_runs(agent=row, reason=reason)
        self._sync_from(row)
        return True

    def _sync_from(self, row: Agent) -> None:
        for field in self._meta.concrete_fields:
            if not isinstance(field, EncryptedTextField):
                setattr(self, field.attname, getattr(row, field.attname))


class AgentToken(models.Model):
    """The agent's credential for the gateway and agent API; only its hash is kept."""

    PREFIX = "sca_"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="tokens")
    token_hash = models.CharField(max_length=64, unique=True)
    hint = models.CharField(
        max_length=16, help_text="The token's first characters, to recognise it."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.hint}… ({'revoked' if self.revoked_at else 'active'})"


class AgentEventQuerySet(models.QuerySet):
    def update(self, **kwargs: Any) -> int:
        raise TypeError("AgentEvent is append-only")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise TypeError("AgentEvent is append-only")


class AgentEvent(models.Model):
    """One change in an agent's life: who, when, from, to, why. Never edited."""

    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="events")
    # PROTECT: the audit trail outlives nothing it names; deactivate users instead.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    source = models.CharField(
        max_length=32, help_text="What acted: owner, operator, stripe, kill_switch, system…"
    )
    from_status = models.CharField(max_length=20, blank=True)
    to_status = models.CharField(max_length=20, blank=True)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = AgentEventQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.agent_id}: {self.from_status or '∅'} → {self.to_status} ({self.source})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise TypeError("AgentEvent is append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise TypeError("AgentEvent is append-only")


class KillSwitchCall(models.Model):
    """One call to the kill switch webhook, accepted or refused: the audit trail.

    ``agent_id_given`` is the path segment exactly as sent (truncated), so probes
    with ids that name no agent are on record too. Nothing here is secret: no
    signature, no body.
    """

    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    agent_id_given = models.CharField(max_length=64)
    agent = models.ForeignKey(
        Agent,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="kill_switch_calls",
    )
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    method = models.CharField(max_length=10)
    accepted = models.BooleanField()
    status_code = models.PositiveSmallIntegerField()
    outcome = models.CharField(
        max_length=32, help_text="The refusal's error code, or what the kill did."
    )
    signed_with = models.CharField(
        max_length=8, blank=True, help_text="Which secret verified: operator or owner."
    )
    action = models.CharField(max_length=8, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]

    def __str__(self) -> str:
        verdict = "accepted" if self.accepted else "refused"
        return f"{self.agent_id_given}: {verdict} ({self.outcome})"


class UsedKillSignature(models.Model):
    """The kill switch's replay store: a signature is accepted once per agent.

    Keyed by (agent, signature): a signature that has stopped one agent cannot
    stop it again, and two agents may each be stopped by calls that happen to
    share a signature (a v1 operator script sending the same body in the same
    second). A row may go once its signature can no longer pass the timestamp
    check; see ``agents.kill_switch.REPLAY_WINDOW``. It lives in the database,
    not Redis, because the kill switch must work with Redis down.
    """

    # No database constraint on purpose: checking one would lock the agent's row
    # (a key-share lock waits for any FOR UPDATE, e.g. a state change or a
    # billing handler under way), and the kill's revocation must never wait.
    # The statement that writes a row checks the agent exists itself.
    agent = models.ForeignKey(
        Agent, on_delete=models.CASCADE, related_name="+", db_constraint=False
    )
    signature = models.CharField(max_length=64)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["agent", "signature"], name="kill_signature_used_once_per_agent"
            )
        ]

    def __str__(self) -> str:
        return f"{self.agent_id}: {self.signature[:12]}… at {self.created_at:%Y-%m-%d %H:%M:%S}"


# The conversation's models live in their own module; importing them here is
# what registers them with the app.
class CapAlert(models.Model):
    """An alert mailed to the owner when usage passed a share of a cap: one row per
    cap, threshold and period, so each is sent once (the unique constraint decides)."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="cap_alerts")
    cap = models.CharField(max_length=32, help_text="daily_token_cap or monthly_cost_cap")
    threshold = models.PositiveSmallIntegerField(help_text="Percent of the cap: 50, 80 or 100.")
    period = models.CharField(
        max_length=40, help_text="The UTC day, or the billing period's start, it counts in."
    )
    used = models.CharField(max_length=40, help_text="How much was used when it was sent.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["agent", "cap", "threshold", "period"], name="one_cap_alert_per_period"
            )
        ]

    def __str__(self) -> str:
        return f"{self.agent_id}: {self.cap} {self.threshold}% ({self.period})"


class OwnerNotification(models.Model):
    """A mail to an agent's owner, claimed here before it is sent: one row per
    notification key (what happened and which event), so a task that runs again
    (its worker died after sending, before acknowledging) sends nothing.

    ``sent_at`` stays empty if the sender died between the claim and the send:
    such a mail is lost rather than repeated, and this row shows it."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="notifications")
    key = models.CharField(max_length=200, unique=True)
    subject = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.key


from agents.conversations import Message, Note, Run, RunStep, Schedule  # noqa: E402, F401
