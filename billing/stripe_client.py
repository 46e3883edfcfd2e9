"""The one module that talks to Stripe.

API calls go through a ``stripe.StripeClient`` whose base address is
STRIPE_API_BASE (Stripe's own API when empty; tests point it at a local
stand-in that speaks Stripe's wire format). Stripe's exceptions leave this
module as :class:`StripeFailed`, whose ``permanent`` flag says whether trying
again can help. Incoming webhooks are verified here too.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import stripe
from django.conf import settings

from safer_claw import boundary

# Stripe's own default: a signature older than this is refused. We refuse one
# dated this far in the future too, which the library does not.
WEBHOOK_TOLERANCE_SECONDS = 300
# Stripe's header: "t=<unix seconds>,v1=<hex>[,v1=<hex>…][,v0=<hex>]". Anything else
# is refused before the library reads it.
_SIGNATURE_HEADER = re.compile(r"t=([0-9]{1,12})(,[a-z0-9]{1,8}=[0-9A-Za-z]{1,128}){1,8}")
# The latest second a datetime can hold: a later `created` cannot be stored.
_MAX_CREATED = 253402300799
NETWORK_RETRIES = 2  # with Stripe's idempotency keys, so a retried POST is not repeated

# Errors that come back the same however often the call is made.
PERMANENT_ERRORS = (
    stripe.InvalidRequestError,
    stripe.AuthenticationError,
    stripe.PermissionError,
    stripe.CardError,
    stripe.IdempotencyError,
)


class StripeFailed(Exception):
    """A call to Stripe failed; ``permanent`` says whether a retry can help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class WebhookRejected(Exception):
    """A webhook that is not provably Stripe's, recent, and a well-formed event."""


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


def _client() -> stripe.StripeClient:
    return _client_for(settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE)


@functools.lru_cache(maxsize=4)
def _client_for(api_key: str, api_base: str) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base} if api_base else None,
        max_network_retries=NETWORK_RETRIES,
    )


@contextlib.contextmanager
def _calling(action: str) -> Iterator[None]:
    try:
        yield
    except stripe.StripeError as exc:
        detail = exc.user_message or str(exc) or type(exc).__name__
        raise StripeFailed(
            f"{action}: {detail}", permanent=isinstance(exc, PERMANENT_ERRORS)
        ) from exc


def create_customer(*, email: str, user_id: str) -> str:
    """A new Stripe customer for a user; returns its id.

    The idempotency key is the user's id, so two checkouts started at once
    by one user get the same customer from Stripe.
    """
    with _calling("create customer"):
        customer = _client().v1.customers.create(
            params={"email": email, "metadata": {"user_id": user_id}},
            options={"idempotency_key": f"saferclaw-customer-{user_id}"},
        )
    return customer.id


def create_checkout_session(
    *,
    customer_id: str,
    price_id: str,
    agent_id: str,
    plan_name: str,
    success_url: str,
    cancel_url: str,
    idempotency_key: str,
) -> CheckoutSession:
    """A hosted Checkout Session (subscription mode) that pays for one agent.

    The agent's id rides along as ``client_reference_id`` and in the metadata
    of the session and of the subscription it creates, so every later event
    (invoices included) names the agent it is about.
    """
    metadata = {"agent_id": agent_id, "plan": plan_name}
    with _calling("create checkout session"):
        session = _client().v1.checkout.sessions.create(
            params={
                "mode": "subscription",
                "customer": customer_id,
                "client_reference_id": agent_id,
                "line_items": [{"price": price_id, "quantity": 1}],
                "metadata": metadata,
                "subscription_data": {"metadata": metadata},
                "success_url": success_url,
                "cancel_url": cancel_url,
            },
            options={"idempotency_key": idempotency_key},
        )
    return CheckoutSession(id=session.id, url=session.url or "")


@dataclass(frozen=True)
class StripeSubscription:
    id: str
    status: str  # Stripe's: active, trialing, incomplete, past_due, unpaid, paused, canceled…
    customer_id: str
    metadata: dict[str, str]


def retrieve_subscription(subscription_id: str) -> StripeSubscription:
    """A subscription as Stripe has it now.

    Webhook events are snapshots, delivered late and in any order; this is
    what their handlers act on instead.
    """
    with _calling("retrieve subscription"):
        subscription = _client().v1.subscriptions.retrieve(subscription_id)
    customer = subscription.customer
    return StripeSubscription(
        id=subscription.id,
        status=subscription.status,
        customer_id=customer if isinstance(customer, str) else customer.id,
        metadata=subscription.metadata.to_dict() if subscription.metadata else {},
    )


def expire_checkout_session(session_id: str) -> None:
    """Close an open checkout so it can no longer be paid (Stripe refuses a paid one)."""
    with _calling("expire checkout session"):
        _client().v1.checkout.sessions.expire(session_id)


def cancel_subscription(subscription_id: str) -> None:
    """Cancel a subscription now: the customer is not charged for it again.
    One Stripe no longer knows (already canceled) counts as done."""
    with _calling("cancel subscription"):
        try:
            _client().v1.subscriptions.cancel(subscription_id)
        except stripe.InvalidRequestError as exc:
            if exc.code != "resource_missing":
                raise


def create_portal_session(*, customer_id: str, return_url: str) -> str:
    """The URL of a customer-portal session where the customer manages or cancels."""
    with _calling("open the customer portal"):
        session = _client().v1.billing_portal.sessions.create(
            params={"customer": customer_id, "return_url": return_url}
        )
    return session.url


def verify_webhook(payload: bytes, signature: str | None) -> dict[str, Any]:
    """The event in a webhook body, once its signature and its age check out.

    Raises WebhookRejected for a missing or bad signature, a timestamp more
    than five minutes from now either way, or a body that is not an event.
    """
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        raise WebhookRejected("Stripe webhooks are not configured here")
    header = _SIGNATURE_HEADER.fullmatch(signature or "")
    if header is None:
        raise WebhookRejected("signature check failed: malformed Stripe-Signature header")
    try:
        # Our reader first: the library's would recurse into any depth.
        if not isinstance(boundary.loads(payload), dict):
            raise WebhookRejected("the body is not a Stripe event")
    except boundary.BadInput as exc:
        raise WebhookRejected(f"the body is not a Stripe event: {exc.message}") from exc
    try:
        event = stripe.Webhook.construct_event(
            payload, signature, secret, tolerance=WEBHOOK_TOLERANCE_SECONDS
        )
    except stripe.SignatureVerificationError as exc:
        raise WebhookRejected(f"signature check failed: {exc.user_message or exc}") from exc
    except ValueError as exc:  # not UTF-8, not JSON, or not a snapshot event
        raise WebhookRejected("the body is not a Stripe event") from exc
    _refuse_future_timestamp(int(header.group(1)))
    data = event.to_dict()
    if not _looks_like_event(data):
        raise WebhookRejected("the body is not a Stripe event")
    return data


def _refuse_future_timestamp(timestamp: int) -> None:
    # The library checks only that a signature is not too old, so a signature
    # dated ahead would stay replayable for that long after it was made.
    if timestamp > time.time() + WEBHOOK_TOLERANCE_SECONDS:
        raise WebhookRejected("signature check failed: timestamp is in the future")


def _looks_like_event(data: dict[str, Any]) -> bool:
    return (
        isinstance(data.get("id"), str)
        and data["id"].startswith("evt_")
        and isinstance(data.get("type"), str)
        and isinstance(data.get("created"), int)
        and 0 <= data["created"] <= _MAX_CREATED
        and isinstance((data.get("data") or {}).get("object"), dict)
    )
