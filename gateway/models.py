"""The gateway's ledger: prices, one row per model call, and agent runs."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.core.validators import MinValueValidator
from django.db import models

from agents.models import Agent, AIProvider

ZERO = Decimal("0")


class ModelPrice(models.Model):
    """What a model costs, in US dollars per million tokens."""

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
    RELEASED = "released", "Reservation released by the sweeper"


class UsageRecord(models.Model):
    """One model call: reserved before forwarding, settled after (the ledger)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="usage_records")
    provider = models.CharField(max_length=16, choices=AIProvider.choices)
    model = models.CharField(max_length=100)
    status = models.CharField(
        max_length=16, choices=UsageStatus.choices, default=UsageStatus.PENDING, db_index=True
    )
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    streamed = models.BooleanField(default=False)
    upstream_request_id = models.CharField(max_length=128, blank=True)
    input_tokens = models.PositiveBigIntegerField(default=0)
    cached_input_tokens = models.PositiveBigIntegerField(default=0)
    cache_creation_input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    tool_calls = models.PositiveIntegerField(default=0)
    reserved_tokens = models.PositiveBigIntegerField(default=0)
    reserved_cost = models.DecimalField(max_digits=14, decimal_places=6, default=ZERO)
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=ZERO)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    run_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["agent", "created_at"])]

    def __str__(self) -> str:
        return f"{self.agent_id} {self.model} {self.status}"

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class AgentRun(models.Model):
    """One run of the agent loop: its deadline and tool-call count."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="gateway_runs")
    run_id = models.CharField(max_length=64)
    started_at = models.DateTimeField(auto_now_add=True)
    deadline = models.DateTimeField()
    tool_calls = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["agent", "run_id"], name="one_run_per_id"),
        ]

    def __str__(self) -> str:
        return f"{self.agent_id}/{self.run_id}"


class RateWindow(models.Model):
    """Requests per agent per minute, when there is no Redis to count them."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+")
    minute = models.BigIntegerField(help_text="Unix time // 60.")
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["agent", "minute"], name="one_window_per_minute"),
        ]

    def __str__(self) -> str:
        return f"{self.agent_id}@{self.minute}: {self.count}"
