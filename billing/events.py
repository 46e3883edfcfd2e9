"""What each Stripe event does, handled once per event id.

An event is inserted by its id before it is handled, in the same transaction
as everything the handler changes: a redelivery, or a second delivery racing
the first, collides on the primary key and does nothing. Slow work (Docker)
is queued to Celery only when that transaction commits. Each event row keeps
its handler's outcome.

Stripe neither orders nor deduplicates events across types: an
``invoice.payment_failed`` may arrive after the ``invoice.paid`` that settled
the same invoice. So an event is only a prompt. Its handler reads the
subscription from Stripe's API, as it is now, while holding our row's lock,
and brings ours to that state (:func:`_follow_stripe`): whatever the delivery
order, the last event handled leaves the state Stripe has. (Comparing events'
``created`` instead would not do: it counts whole seconds, and the newest
event can still predate a change whose event is yet to come.)
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from agents.models import Agent
from agents.services import start_new_billing_period
from billing import stripe_client
from billing.models import EventOutcome, StripeEvent, Subscription, SubscriptionStatus
from billing.services import end_subscription, set_subscription_status
from billing.stripe_client import StripeFailed, StripeSubscription

logger = logging.getLogger(__name__)
Outcome = tuple[str, str]  # (EventOutcome, message)

# Stripe's subscription statuses, as ours. Only an active one pays for its agent.
STRIPE_STATUSES = {
    "active": SubscriptionStatus.ACTIVE,
    "trialing": SubscriptionStatus.ACTIVE,
    "incomplete": SubscriptionStatus.PENDING,  # the first payment is not made, or not settled
    "past_due": SubscriptionStatus.PAST_DUE,
    "unpaid": SubscriptionStatus.PAST_DUE,
    "paused": SubscriptionStatus.PAST_DUE,
    "canceled": SubscriptionStatus.CANCELED,
    "incomplete_expired": SubscriptionStatus.CANCELED,
}
PAST_DUE_REASON = (
    "The subscription's last payment failed. Update your card under Manage billing "
    "and pay the invoice to resume."
)


class EventRefused(Exception):
    """An event about one of ours that contradicts what we know; recorded as an error."""


@dataclass(frozen=True)
class Receipt:
    event: StripeEvent | None  # None: seen before, nothing done
    retry: bool = False  # the handler broke unexpectedly: ask Stripe to send it again


def receive_event(data: dict[str, Any]) -> Receipt:
    """Store a verified event by id and handle it, unless it was handled before.

    An event whose handler raised unexpectedly is kept with outcome `error`
    and handled again when Stripe redelivers it.
    """
    with transaction.atomic():
        event = _claim(data)
        if event is None:
            return Receipt(event=None)
        retry = False
        try:
            with transaction.atomic():
                outcome, message = handle_event(data)
        except EventRefused as exc:
            outcome, message = EventOutcome.ERROR, str(exc)
        except Exception as exc:
            logger.exception("stripe event %s (%s) failed", data["id"], data["type"])
            outcome, message, retry = EventOutcome.ERROR, f"{type(exc).__name__}: {exc}", True
        event.outcome, event.message, event.handled_at = outcome, message, timezone.now()
        event.save(update_fields=["outcome", "message", "handled_at"])
    log = logger.warning if outcome == EventOutcome.ERROR else logger.info
    log("stripe event %s (%s): %s %s", event.id, event.type, outcome, message)
    return Receipt(event=event, retry=retry)


def _claim(data: dict[str, Any]) -> StripeEvent | None:
    try:
        with transaction.atomic():
            return StripeEvent.objects.create(
                id=data["id"],
                type=data["type"],
                livemode=bool(data.get("livemode")),
                created=dt.datetime.fromtimestamp(data["created"], tz=dt.UTC),
                payload=data,
            )
    except IntegrityError:
        # Seen before. Only an event that broke is worth another go; the
        # conditional update lets one redelivery, not two, take it.
        taken = StripeEvent.objects.filter(pk=data["id"], outcome=EventOutcome.ERROR).update(
            outcome=EventOutcome.PROCESSING, attempts=F("attempts") + 1
        )
        return StripeEvent.objects.get(pk=data["id"]) if taken else None


def handle_event(data: dict[str, Any]) -> Outcome:
    handler = HANDLERS.get(data["type"])
    if handler is None:
        return EventOutcome.IGNORED, f"{data['type']} is not an event this app acts on"
    return handler(data["data"]["object"])


# --- Following Stripe --------------------------------------------------------------------


def _follow_stripe(
    subscription: Subscription, stripe_id: str, *, failed_invoice: dict[str, Any] | None = None
) -> Outcome:
    """Bring ``subscription`` (locked by the caller) to its Stripe subscription's state now.

    Reading Stripe under our row's lock orders the handlers: each reads the
    state at least as new as the one before it wrote. ``failed_invoice`` gives
    the reason shown to the owner when the agent is paused for it.
    """
    current = _retrieve(stripe_id)
    named = _uuid(current.metadata.get("agent_id"))
    if named is not None and named != subscription.agent_id:
        raise EventRefused(
            f"subscription {current.id} names agent {named}, not {subscription.agent_id}"
        )
    if subscription.stripe_subscription_id not in ("", current.id):
        raise EventRefused(
            f"subscription {current.id} is for agent {subscription.agent_id}, which is paid "
            f"by {subscription.stripe_subscription_id}"
        )
    status = STRIPE_STATUSES.get(current.status)
    if status is None:
        raise EventRefused(f"subscription {current.id} is {current.status!r}, a status not known")
    if subscription.status == SubscriptionStatus.CANCELED:
        if status == SubscriptionStatus.CANCELED:
            return EventOutcome.IGNORED, "subscription already ended"
        raise EventRefused(
            f"subscription {current.id} is {current.status} at Stripe after agent "
            f"{subscription.agent_id} was given up: refund it at Stripe, or restore the agent"
        )
    before = subscription.status
    happened = set_subscription_status(
        subscription,
        status,
        source="stripe",
        reason=_reason(status, failed_invoice),
        stripe_subscription_id=current.id,
        stripe_customer_id=current.customer_id or subscription.stripe_customer_id,
    )
    outcome = EventOutcome.OK if status != before else EventOutcome.IGNORED
    return outcome, f"{status.replace('_', ' ')}; {happened}"


def _reason(status: str, failed_invoice: dict[str, Any] | None) -> str:
    """Why the agent moves, as its owner and the audit trail read it."""
    if status == SubscriptionStatus.ACTIVE:
        return "payment received"
    if status == SubscriptionStatus.PENDING:
        return "payment not settled yet"
    if status == SubscriptionStatus.CANCELED:
        return "subscription canceled"
    return _payment_failed_reason(failed_invoice) if failed_invoice else PAST_DUE_REASON


def _retrieve(stripe_id: str) -> StripeSubscription:
    try:
        return stripe_client.retrieve_subscription(stripe_id)
    except StripeFailed as exc:
        if exc.permanent:  # Stripe does not know it: sending the event again will not help
            raise EventRefused(str(exc)) from exc
        raise  # handled again when Stripe sends the event again


# --- Checkout -------------------------------------------------------------------------------


def on_checkout_completed(session: dict[str, Any]) -> Outcome:
    """Paid (or a bank debit started): the agent follows its new subscription."""
    if session.get("mode") != "subscription":
        return EventOutcome.IGNORED, "not a subscription checkout"
    subscription = _subscription_for_checkout(session)
    if subscription is None:
        return EventOutcome.IGNORED, f"checkout {session['id']} is not one of ours"
    stripe_id = _id(session.get("subscription"))
    if not stripe_id:
        return EventOutcome.IGNORED, "the checkout has made no subscription yet"
    return _follow_stripe(subscription, stripe_id)


def on_checkout_expired(session: dict[str, Any]) -> Outcome:
    """Never paid: the agent that waited for payment is deleted."""
    subscription = _subscription_for_checkout(session)
    if subscription is None or subscription.status != SubscriptionStatus.PENDING:
        return EventOutcome.IGNORED, "no unpaid checkout of ours"
    end_subscription(subscription, source="stripe", reason="checkout expired unpaid")
    return EventOutcome.OK, f"agent {subscription.agent_id} deleted (never paid)"


def _subscription_for_checkout(session: dict[str, Any]) -> Subscription | None:
    rows = Subscription.objects.select_for_update().select_related("agent", "plan")
    found = rows.filter(stripe_checkout_session_id=session["id"]).first()
    if found:
        return found
    agent_id = _uuid(session.get("client_reference_id"))
    found = rows.filter(agent_id=agent_id).first() if agent_id else None
    if found and found.stripe_checkout_session_id:
        raise EventRefused(
            f"checkout {session['id']} names agent {agent_id}, which was sent to "
            f"checkout {found.stripe_checkout_session_id}"
        )
    return found


# --- Invoices -------------------------------------------------------------------------------


def on_invoice_paid(invoice: dict[str, Any]) -> Outcome:
    """A payment: the agent follows its subscription, and the monthly cost counter
    starts the period the invoice paid for (a period not after the current one,
    as from a late delivery, changes nothing)."""
    found = _subscription_for_invoice(invoice)
    if found is None:
        return EventOutcome.IGNORED, "no subscription of ours"
    subscription, stripe_id = found
    outcome, message = _follow_stripe(subscription, stripe_id)
    subscription = Subscription.objects.get(pk=subscription.pk)
    if subscription.status == SubscriptionStatus.CANCELED:
        return outcome, message
    started = _period_start(invoice)
    agent = Agent.objects.get(pk=subscription.agent_id)
    if start_new_billing_period(agent=agent, started_at=started, source="stripe"):
        outcome, message = EventOutcome.OK, f"{message}; period from {started:%Y-%m-%d}"
    else:
        message = f"{message}; period already started"
    if subscription.current_period_start is None or started > subscription.current_period_start:
        subscription.current_period_start = started
        subscription.save(update_fields=["current_period_start", "updated_at"])
    return outcome, message


def on_invoice_payment_failed(invoice: dict[str, Any]) -> Outcome:
    """A payment failed: if the subscription is still unpaid at Stripe, the agent is
    paused with the invoice's reason, shown to its owner."""
    found = _subscription_for_invoice(invoice)
    if found is None:
        return EventOutcome.IGNORED, "no subscription of ours"
    subscription, stripe_id = found
    return _follow_stripe(subscription, stripe_id, failed_invoice=invoice)


def _subscription_for_invoice(invoice: dict[str, Any]) -> tuple[Subscription, str] | None:
    # Since API version 2025-03-31 the subscription is under parent; before,
    # it was a top-level field. Endpoints pinned to either may call us.
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    stripe_id = _id(details.get("subscription") or invoice.get("subscription"))
    metadata = details.get("metadata") or (invoice.get("subscription_details") or {}).get(
        "metadata"
    )
    if not stripe_id:
        return None  # a one-off invoice: no subscription of ours is billed by it
    subscription = _subscription_for_stripe(stripe_id, metadata or {})
    return (subscription, stripe_id) if subscription else None


def _period_start(invoice: dict[str, Any]) -> dt.datetime:
    # The line items carry the service period being paid for; the invoice's
    # own period_end is where that period starts when they are not included.
    starts = [
        line["period"]["start"]
        for line in (invoice.get("lines") or {}).get("data") or []
        if (line.get("period") or {}).get("start")
    ]
    timestamp = max(starts) if starts else invoice["period_end"]
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)


def _payment_failed_reason(invoice: dict[str, Any]) -> str:
    what = f"Payment failed for invoice {invoice.get('number') or invoice['id']}"
    retry_at = invoice.get("next_payment_attempt")
    if retry_at:
        when = dt.datetime.fromtimestamp(retry_at, tz=dt.UTC)
        return (
            f"{what}; Stripe will try again on {when:%d %b %Y}. "
            "Update your card under Manage billing to resume the agent sooner."
        )
    return f"{what}. Update your card under Manage billing and pay the invoice to resume."


# --- Subscriptions ------------------------------------------------------------------------


def on_subscription_changed(stripe_subscription: dict[str, Any]) -> Outcome:
    """Updated or deleted: the agent follows (canceled for good: its container is
    removed, its slot freed, the agent `deleted`)."""
    stripe_id = stripe_subscription["id"]
    subscription = _subscription_for_stripe(stripe_id, stripe_subscription.get("metadata") or {})
    if subscription is None:
        return EventOutcome.IGNORED, "not a subscription of ours"
    return _follow_stripe(subscription, stripe_id)


def _subscription_for_stripe(stripe_id: str, metadata: dict[str, Any]) -> Subscription | None:
    rows = Subscription.objects.select_for_update().select_related("agent", "plan")
    if stripe_id:
        found = rows.filter(stripe_subscription_id=stripe_id).first()
        if found:
            return found
    # Events are not ordered: an invoice can come before the checkout that made
    # its subscription. The agent id in the subscription's metadata finds it.
    agent_id = _uuid(metadata.get("agent_id"))
    found = rows.filter(agent_id=agent_id).first() if agent_id else None
    if found and found.stripe_subscription_id and found.stripe_subscription_id != stripe_id:
        raise EventRefused(
            f"subscription {stripe_id} names agent {agent_id}, which is paid by "
            f"{found.stripe_subscription_id}"
        )
    return found


def _id(value: Any) -> str:
    """The id of a field that is an id or, when expanded, the object."""
    if isinstance(value, dict):
        return value.get("id") or ""
    return value or ""


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


HANDLERS: dict[str, Callable[[dict[str, Any]], Outcome]] = {
    "checkout.session.completed": on_checkout_completed,
    "checkout.session.async_payment_succeeded": on_checkout_completed,
    "checkout.session.expired": on_checkout_expired,
    "invoice.paid": on_invoice_paid,
    "invoice.payment_failed": on_invoice_payment_failed,
    "customer.subscription.updated": on_subscription_changed,
    "customer.subscription.deleted": on_subscription_changed,
}
