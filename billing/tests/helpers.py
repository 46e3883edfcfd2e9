"""Helpers for billing tests: signed deliveries to the real endpoint, checkouts."""

from __future__ import annotations

import json
from typing import Any

from django.test import Client

from billing.models import Plan, Subscription
from billing.services import start_checkout
from billing.tests.fake_stripe import WEBHOOK_SECRET, sign

WEBHOOK_URL = "/webhooks/stripe"


def post_event(
    client: Client,
    event: dict[str, Any] | None = None,
    *,
    body: str | bytes | None = None,
    signature: str | None = None,
    timestamp: int | None = None,
):
    """POST an event to /webhooks/stripe, signed by the stripe library unless told."""
    payload = body if body is not None else json.dumps(event)
    if signature is None:
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        signature = sign(text, WEBHOOK_SECRET, timestamp)
    return client.post(
        WEBHOOK_URL, data=payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature
    )


def checkout(owner: Any, plan: Plan, name: str = "helper") -> Subscription:
    """Start a checkout the way the plan chooser does; returns its subscription."""
    started = start_checkout(
        owner=owner,
        plan=plan,
        name=name,
        provider="openai",
        provider_key="sk-test-provider-key",
        absolute_url=lambda path: f"http://testserver{path}",
        actor=owner,
    )
    return Subscription.objects.get(agent=started.agent)
