"""The gateway's ledger: prices and one row per model call."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.core.validators import MinValueValidator
from django.db import models

from agents.conversations import Run
from agents.models import Agent, AIProvider

ZERO = Decimal("0")


class ModelPrice(models.Model):
    """What one model name costs, in US dollars per million tokens.

    A dated snapshot (``gpt-4o-2024-05-13``) is its own row: it is never priced
    as its alias, whose price may differ. Cache writes are priced by their
    lifetime (Anthropic: 1.25x input for 5 minutes, 2x for an hour; OpenAI
    writes its cache for free). Long-context and priority tiers are not priced:
    the gateway refuses what would select them (see gateway.providers).
    """

    provider = models.CharField(max_length=16, choices=AIProvider.choices)
    model = models.CharField(max_length=100, help_text="The exact model name sent by clients.")
    input_per_mtok = models.DecimalField(
        "input $/Mtok", max_digits=12, decimal_places=6, validators=[MinValueValidator(ZERO)]
    )
    cached_input_per_mtok = models.DecimalField(
        "cached input $/Mtok",
        max_digits=12,
        decimal_places=6,
        validators=[MinValueValidator(ZERO)],
    )
    cache_write_5m_per_mtok = models.DecimalField(
        "cache write (5 min) $/Mtok",
        max_digits=12,
        decimal_places=6,
        validators=[MinValueValidator(ZERO)],
    )
    cache_write_1h_per_mtok = models.DecimalField(
        "cache write (1 h) $/Mtok",
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(ZERO)],
        help_text="Empty: a request that asks for a one-hour cache is refused.",
    )
    output_per_mtok = models.DecimalField(
        "output $/Mtok", max_digits=12, decimal_places=6, validators=[MinValueValidator(ZERO)]
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["provider", "model"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "model"], name="one_price_per_model"),
        ]

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"


class UsageStatus(models.TextChoices):
    PENDING = "pending", "In flight (reserved)"
    OK = "ok", "OK"
    UPSTREAM_ERROR = "upstream_error", "Upstream error"
    CLIENT_GONE = "client_gone", "Client disconnected"
    REFUSED_RESPONSE = "refused_response", "Response refused (a tool not offered)"
    SWEPT = "swept", "Never settled: charged its reservation by the sweeper"
    LEASE = "lease", "A lease: its calls are rows of their own"


class UsageRecord(models.Model):
    """One model call: reserved before forwarding, settled after (the ledger).

    Or a lease (``reserved_calls`` > 1): a reservation for an agent's busy calls,
    each of which then has a complete row of its own pointing at it (``lease``).
    A settled lease's own usage and cost are what was charged beyond its calls'
    rows: nothing, unless its gateway worker died and the sweeper charged it whole.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed by (agent, created_at) below: a lone agent_id index would only be one
    # more to write on every call.
    agent = models.ForeignKey(
        Agent, on_delete=models.PROTECT, related_name="usage_records", db_index=False
    )
    provider = models.CharField(max_length=16, choices=AIProvider.choices)
    model = models.CharField(max_length=100)
    status = models.CharField(
        max_length=16, choices=UsageStatus.choices, default=UsageStatus.PENDING
    )
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    streamed = models.BooleanField(default=False)
    upstream_request_id = models.CharField(max_length=128, blank=True)
    input_tokens = models.PositiveBigIntegerField(default=0)
    cached_input_tokens = models.PositiveBigIntegerField(default=0)
    cache_creation_input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    tool_calls = models.PositiveIntegerField(default=0)
    tool_names = models.JSONField(
        default=list, blank=True, help_text="The tools the model asked for."
    )
    dropped_tools = models.JSONField(
        default=list, blank=True, help_text="Tools off the allow-list, removed from the request."
    )
    reserved_tokens = models.PositiveBigIntegerField(default=0)
    reserved_output_tokens = models.PositiveBigIntegerField(default=0)
    reserved_cost = models.DecimalField(max_digits=14, decimal_places=6, default=ZERO)
    reserved_tool_calls = models.PositiveIntegerField(default=0)
    charged_reservation = models.BooleanField(
        default=False,
        help_text="No usage came from the provider (a timeout, a broken stream, a crash): "
        "the call was charged its full reservation.",
    )
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=ZERO)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    run = models.ForeignKey(
        Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="usage_records"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    settled_at = models.DateTimeField(null=True, blank=True)
    reserved_calls = models.PositiveIntegerField(
        default=1, db_default=1, help_text="How many calls the row reserves: 1, or a lease's."
    )
    # Not indexed: nothing looks calls up by their lease (a lease's calls are written
    # with its settlement, so the sweeper charges a lease left behind without them).
    lease = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="calls",
        db_index=False,
        help_text="The lease this call was admitted from.",
    )

    class Meta:
        ordering = ["-created_at"]
        # Every call writes its row twice (admitted, settled), so each index costs
        # every call: only the lookups that run are indexed. The sweeper looks for
        # pending rows alone, which a partial index keeps small: a settled row
        # leaves it.
        indexes = [
            models.Index(fields=["agent", "created_at"]),
            models.Index(
                fields=["created_at"],
                condition=models.Q(status="pending"),
                name="usage_pending_since",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.agent_id} {self.model} {self.status}"

    @property
    def is_lease(self) -> bool:
        return self.reserved_calls > 1

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens
