"""Billing test fixtures: plans, a fake Stripe, development mode, eager retries."""

from __future__ import annotations

import pytest

from billing.models import Plan
from billing.tests.factories import PlanFactory
from billing.tests.fake_stripe import fake_stripe_fixture, stripe_api_fixture  # noqa: F401
from safer_claw.celery import app as celery_app


@pytest.fixture
def plan(db) -> Plan:
    return PlanFactory(name="Basic", stripe_price_id="price_starter")


@pytest.fixture
def dev_mode(settings) -> None:
    """No Stripe keys, as in a local run on a fresh machine."""
    settings.STRIPE_SECRET_KEY = ""
    settings.STRIPE_WEBHOOK_SECRET = ""
    settings.BILLING_DEV_MODE = True


@pytest.fixture
def eager_retries():
    """Eager tasks retry as a worker would (at once, without the countdown) instead
    of raising Retry to whoever queued them."""
    before = celery_app.conf.task_eager_propagates
    celery_app.conf.task_eager_propagates = False
    yield
    celery_app.conf.task_eager_propagates = before
