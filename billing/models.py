"""Plans, the subscription that pays for each agent, and Stripe's events as received.

Agents know nothing of billing: an agent copies its plan's limits when it is
created, and the link between an agent and what pays for it lives here.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from agents.models import Agent, AgentLimits, memory_limit_bytes

# The Agent fields a plan grants, copied onto each agent made under it.
PLAN_LIMIT_FIELDS = AgentLimits.limit_field_names()


class Plan(AgentLimits):
    """What a subscription buys: a Stripe price, and the limits of each agent under it."""

    name = models.CharField(max_length=64, unique=True)
    description = models.CharField(max_length=200, blank=True)
    stripe_price_id = models.CharField(
        "Stripe price id",
        max_length=100,
        blank=True,
        help_text="price_… of a recurring monthly price. Plans without one are offered "
        "only in development mode.",
    )
    monthly_price = models.DecimalField(
        "monthly price (USD)",
        max_digits=8,
        decimal_places=2,
        default=Decimal("0"),
        validators=[MinValueValidator(Decimal("0"))],
        help_text="Shown on the plan chooser; Stripe's price decides what is charged.",
    )
    is_active = models.BooleanField("offered", default=True)
    sort_order = models.PositiveSmallIntegerField(default=0)
    max_agents = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1)],
        help_text="How many agents one owner may hold on this plan at once.",
    )

    # Every AgentLimits field is granted to each agent under the plan.

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["sort_order", "monthly_price", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["stripe_price_id"],
                condition=~models.Q(stripe_price_id=""),
                name="plan_stripe_price_unique",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if not isinstance(self.allowed_tools, list) or not all(
            isinstance(tool, str) for tool in self.allowed_tools
        ):
            raise ValidationError({"allowed_tools": "A list of tool names."})

    def agent_limits(self) -> dict[str, Any]:
        """The limits an agent on this plan gets, as Agent field values."""
        return {
            name: list(value) if isinstance(value, list) else value
            for name in PLAN_LIMIT_FIELDS
            for value in [getattr(self, name)]
        }

    def limits_above_plan(self, limits: dict[str, Any]) -> list[str]:
        """The names of ``limits`` that ask for more than this plan grants."""
        above = []
        for name, value in limits.items():
            granted = getattr(self, name)
            if name == "memory_limit":
                too_much = memory_limit_bytes(value) > memory_limit_bytes(granted)
            elif name == "allowed_tools":
                too_much = not set(value) <= set(granted)
            else:
                too_much = value > granted
            if too_much:
                above.append(name)
        return above


class Customer(models.Model):
    """The Stripe customer of a user: one per user, reused for every checkout."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="billing_customer"
    )
    stripe_customer_id = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.user} ({self.stripe_customer_id})"


class SubscriptionStatus(models.TextChoices):
    PENDING = "pending", "Awaiting payment"
    ACTIVE = "active", "Active"
    PAST_DUE = "past_due", "Payment failed"
    CANCELED = "canceled", "Canceled"


# Subscriptions that hold one of the owner's places on their plan.
HOLDS_PLACE = (SubscriptionStatus.PENDING, SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)


class Subscription(models.Model):
    """What pays for one agent: its plan, and its Stripe checkout and subscription."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.OneToOneField(Agent, on_delete=models.PROTECT, related_name="subscription")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="subscriptions"
    )
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    status = models.CharField(
        max_length=16, choices=SubscriptionStatus.choices, default=SubscriptionStatus.PENDING
    )
    dev_mode = models.BooleanField(
        "development mode", default=False, help_text="Activated without payment (no Stripe keys)."
    )
    complimentary = models.BooleanField(
        default=False,
        help_text="Granted by an operator without payment (create_agent --complimentary); "
        "the agent's events say why.",
    )
    stripe_customer_id = models.CharField(max_length=100, blank=True)
    stripe_checkout_session_id = models.CharField(max_length=255, blank=True)
    checkout_url = models.TextField(blank=True, help_text="Stripe's hosted checkout page.")
    stripe_subscription_id = models.CharField(max_length=100, blank=True)
    current_period_start = models.DateTimeField(null=True, blank=True)
    canceled_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["stripe_checkout_session_id"],
                condition=~models.Q(stripe_checkout_session_id=""),
                name="subscription_checkout_session_unique",
            ),
            models.UniqueConstraint(
                fields=["stripe_subscription_id"],
                condition=~models.Q(stripe_subscription_id=""),
                name="subscription_stripe_id_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.plan} for {self.agent_id} ({self.status})"


class EventOutcome(models.TextChoices):
    PROCESSING = "processing", "Processing"
    OK = "ok", "Handled"
    IGNORED = "ignored", "Ignored"
    ERROR = "error", "Error"


class StripeEvent(models.Model):
    """A Stripe event, stored by its id before it is handled.

    The primary key is Stripe's event id, so a redelivery (or a concurrent
    duplicate) collides on insert and is not handled twice.
    """

    id = models.CharField(primary_key=True, max_length=255)
    type = models.CharField(max_length=100, db_index=True)
    livemode = models.BooleanField(default=False)
    created = models.DateTimeField(help_text="When Stripe created the event.")
    payload = models.JSONField()
    outcome = models.CharField(
        max_length=16, choices=EventOutcome.choices, default=EventOutcome.PROCESSING
    )
    message = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=1)
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    handled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.id} {self.type} ({self.outcome})"


class FailedAgent(Agent):
    """Agents in `failed`, for the operators' alert list in admin."""

    class Meta:
        proxy = True
        verbose_name = "failed agent"
        verbose_name_plural = "failed agents (need an operator)"
