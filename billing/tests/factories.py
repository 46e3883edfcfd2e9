from decimal import Decimal

import factory

from billing.models import Plan


class PlanFactory(factory.django.DjangoModelFactory):
    """A Stripe-priced plan with the limits of a small agent."""

    class Meta:
        model = Plan

    name = factory.Sequence(lambda n: f"Plan {n}")
    stripe_price_id = "price_starter"
    monthly_price = Decimal("9.00")
    max_agents = 2
    cpu_limit = Decimal("0.50")
    memory_limit = "256m"
    pids_limit = 64
    daily_token_cap = 100_000
    monthly_cost_cap = Decimal("5.00")
    max_tokens_per_request = 2048
    max_requests_per_minute = 30
    allowed_tools = ["calendar.list_events"]
