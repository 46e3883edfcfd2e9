"""What each Stripe event does, handled once per event id.

An event is inserted by its id before it is handled, in the same transaction
as everything the handler changes: a redelivery, or a second delivery racing
the first, collides on the primary key and does nothing. Slow work (Docker)
is queued to Celery only when that transaction commits. Each event row keeps
its handler's outcome.
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

from agents.models import AgentStatus
from agents.services import start_new_billing_period
from billing.models import EventOutcome, StripeEvent, Subscription, SubscriptionStatus
from billing.services import activate_subscription, after_commit, end_subscription

logger = logging.getLogger(__name__)
S = AgentStatus
Outcome = tuple[str, str]  # (EventOutcome, message)


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


# --- Checkout -------------------------------------------------------------------------------


def on_checkout_completed(session: dict[str, Any]) -> Outcome:
    """Paid: the agent goes to `provisioning` and its deploy is queued."""
    if session.get("mode") != "subscription":
        return EventOutcome.IGNORED, "not a subscription checkout"
    subscription = _subscription_for_checkout(session)
    if subscription is None:
        return EventOutcome.IGNORED, f"checkout {session['id']} is not one of ours"
    if session.get("payment_status") not in ("paid", "no_payment_required"):
        # Bank debits and the like settle later: async_payment_succeeded follows.
        return EventOutcome.IGNORED, "payment not settled yet"
    if subscription.status == SubscriptionStatus.CANCELED:
        raise EventRefused(
            f"checkout {session['id']} was paid after agent {subscription.agent_id} was "
            "given up: refund it at Stripe, or restore the agent"
        )
    activated = activate_subscription(
        subscription,
        source="stripe",
        reason="payment received",
        stripe_subscription_id=_id(session.get("subscription")),
        stripe_customer_id=_id(session.get("customer")),
    )
    if not activated:
        return EventOutcome.IGNORED, f"subscription already {subscription.status}"
    return EventOutcome.OK, f"agent {subscription.agent_id} provisioning; deploy queued"


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
    """A renewal (or the first payment): the monthly cost counter starts a new
    period, and an agent paused for a failed payment runs again."""
    from billing.tasks import resume_paid_agent

    subscription = _subscription_for_invoice(invoice)
    if subscription is None or subscription.status == SubscriptionStatus.CANCELED:
        return EventOutcome.IGNORED, "no live subscription of ours"
    started = _period_start(invoice)
    new_period = start_new_billing_period(
        agent=subscription.agent, started_at=started, source="stripe"
    )
    messages = [f"period from {started:%Y-%m-%d}" if new_period else "period already started"]
    if subscription.current_period_start is None or started > subscription.current_period_start:
        subscription.current_period_start = started
    if subscription.status == SubscriptionStatus.PAST_DUE:
        subscription.status = SubscriptionStatus.ACTIVE
        if subscription.agent.status == S.PAUSED:
            after_commit(resume_paid_agent, str(subscription.agent_id))
            messages.append("agent resuming")
    subscription.save()
    return EventOutcome.OK, "; ".join(messages)


def on_invoice_payment_failed(invoice: dict[str, Any]) -> Outcome:
    """The agent is paused with a reason its owner sees; its container stops."""
    from billing.tasks import stop_paused_agent

    subscription = _subscription_for_invoice(invoice)
    if subscription is None or subscription.status not in (
        SubscriptionStatus.ACTIVE,
        SubscriptionStatus.PAST_DUE,
    ):
        return EventOutcome.IGNORED, "no paid-up subscription of ours"
    subscription.status = SubscriptionStatus.PAST_DUE
    subscription.save()
    agent = subscription.agent
    if agent.status not in (S.RUNNING, S.PROVISIONING):
        return EventOutcome.OK, f"past due; agent left {agent.status}"
    reason = _payment_failed_reason(invoice)
    agent.transition(S.PAUSED, source="stripe", reason=reason)
    after_commit(stop_paused_agent, str(agent.pk))
    return EventOutcome.OK, f"agent paused: {reason}"


def _subscription_for_invoice(invoice: dict[str, Any]) -> Subscription | None:
    # Since API version 2025-03-31 the subscription is under parent; before,
    # it was a top-level field. Endpoints pinned to either may call us.
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    stripe_id = _id(details.get("subscription") or invoice.get("subscription"))
    metadata = details.get("metadata") or (invoice.get("subscription_details") or {}).get(
        "metadata"
    )
    return _subscription_for_stripe(stripe_id, metadata or {})


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


def on_subscription_deleted(stripe_subscription: dict[str, Any]) -> Outcome:
    """Canceled for good: the container is stopped and removed, the slot freed,
    the agent `deleted`."""
    subscription = _subscription_for_stripe(
        stripe_subscription["id"], stripe_subscription.get("metadata") or {}
    )
    if subscription is None:
        return EventOutcome.IGNORED, "not a subscription of ours"
    if not end_subscription(subscription, source="stripe", reason="subscription canceled"):
        return EventOutcome.IGNORED, "subscription already ended"
    return EventOutcome.OK, f"agent {subscription.agent_id} being torn down"


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
    "customer.subscription.deleted": on_subscription_deleted,
}
