"""POST /webhooks/stripe: what is refused, what is stored, what each event does.

Events come from the fake Stripe in Stripe's wire format, are signed with the
stripe library and posted to the real endpoint. These tests stop at the
database (queued Celery work runs only on commit, which a test transaction
never reaches); tests/test_lifecycle.py follows them onto real Docker engines.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from decimal import Decimal

import pytest
import stripe

from agents.models import Agent, AgentEvent, AgentStatus
from billing.models import EventOutcome, StripeEvent, Subscription, SubscriptionStatus
from billing.tests.fake_stripe import WEBHOOK_SECRET, sign
from billing.tests.helpers import WEBHOOK_URL, checkout, post_event

pytestmark = pytest.mark.django_db
S = AgentStatus


@pytest.fixture
def pending(stripe_api, plan, alice) -> Subscription:
    """Alice's agent, sent to Stripe's checkout and not paid yet."""
    return checkout(alice, plan)


def completed_event(stripe_api, subscription: Subscription, **kwargs) -> dict:
    return stripe_api.complete_checkout(subscription.stripe_checkout_session_id, **kwargs)


def world(subscription: Subscription) -> tuple:
    """Everything a refused webhook must leave as it was."""
    subscription.refresh_from_db()
    agent = Agent.objects.get(pk=subscription.agent_id)
    return (
        StripeEvent.objects.count(),
        AgentEvent.objects.count(),
        agent.status,
        agent.period_started_at,
        subscription.status,
        subscription.stripe_subscription_id,
    )


# --- Refused: nothing changes ------------------------------------------------------------


def test_the_stripe_library_alone_accepts_signatures_dated_in_the_future():
    # Why the endpoint checks the timestamp itself: the library's tolerance only
    # looks backwards, so a signature dated an hour (or a day) ahead passes.
    payload = json.dumps({"id": "evt_x", "object": "event"})
    for ahead in (3600, 86_400):
        header = sign(payload, WEBHOOK_SECRET, int(time.time()) + ahead)
        assert stripe.WebhookSignature.verify_header(payload, header, WEBHOOK_SECRET, 300)


REFUSALS = {
    "signed with another secret": {"secret": "whsec_someone_else"},
    "body changed after signing": {"tamper": True},
    "empty signature header": {"signature": ""},
    "garbled signature header": {"signature": "t=soon,v1=nothing"},
    "stale timestamp": {"timestamp_offset": -301},
    "timestamp five minutes ahead": {"timestamp_offset": 301},
    "timestamp an hour ahead": {"timestamp_offset": 3600},
    "malformed JSON": {"body": '{"id": "evt_1", "type": '},
    "not UTF-8": {"body": b'{"id": "evt_\xff\xfe"}'},
    "JSON that is not an event": {"body": '{"hello": "world"}'},
}


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_a_webhook_that_is_not_provably_stripes_and_recent_is_refused(
    client, stripe_api, pending, case
):
    event = completed_event(stripe_api, pending)
    before = world(pending)
    body, signature = case.get("body"), case.get("signature")
    if "secret" in case:
        signature = sign(json.dumps(event), case["secret"])
    if case.get("tamper"):
        signature = sign(json.dumps(event))
        event["data"]["object"]["client_reference_id"] = "someone-else"
    offset = case.get("timestamp_offset")
    response = post_event(
        client,
        event,
        body=body,
        signature=signature,
        timestamp=int(time.time()) + offset if offset else None,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_webhook"
    assert world(pending) == before


def test_a_webhook_without_a_signature_header_is_refused(client, stripe_api, pending):
    event = completed_event(stripe_api, pending)
    before = world(pending)
    response = client.post(WEBHOOK_URL, data=json.dumps(event), content_type="application/json")
    assert response.status_code == 400
    assert world(pending) == before


def test_an_oversized_body_is_refused_before_it_is_read(client, stripe_api, pending):
    event = completed_event(stripe_api, pending)
    event["data"]["object"]["metadata"]["padding"] = "x" * (256 * 1024)
    before = world(pending)
    response = post_event(client, event)  # correctly signed, just too big
    assert response.status_code == 413
    assert world(pending) == before


def test_only_post_is_accepted(client, stripe_api):
    assert client.get(WEBHOOK_URL).status_code == 405


# --- Stored, then handled once ----------------------------------------------------------------


def test_a_paid_checkout_is_stored_then_moves_the_agent_to_provisioning(
    client, stripe_api, pending
):
    event = completed_event(stripe_api, pending)
    response = post_event(client, event)

    assert response.status_code == 200
    assert response.json()["outcome"] == "ok"
    stored = StripeEvent.objects.get(pk=event["id"])
    assert (stored.type, stored.outcome, stored.attempts) == ("checkout.session.completed", "ok", 1)
    assert "deploy in the outbox" in stored.message
    assert stored.payload == event
    pending.refresh_from_db()
    session = event["data"]["object"]
    assert pending.status == SubscriptionStatus.ACTIVE
    assert pending.stripe_subscription_id == session["subscription"]
    agent = Agent.objects.get(pk=pending.agent_id)
    assert agent.status == S.PROVISIONING
    last = agent.events.last()
    assert (last.source, last.to_status, last.reason) == (
        "stripe",
        "provisioning",
        "payment received",
    )


def test_a_redelivered_event_is_acknowledged_and_changes_nothing(client, stripe_api, pending):
    event = completed_event(stripe_api, pending)
    assert post_event(client, event).status_code == 200
    before = world(pending)

    again = post_event(client, event)

    assert again.status_code == 200
    assert again.json() == {"received": True, "duplicate": True}
    assert world(pending) == before
    assert StripeEvent.objects.get(pk=event["id"]).attempts == 1


def test_a_second_event_for_a_paid_checkout_changes_nothing(client, stripe_api, pending):
    # checkout.session.completed and async_payment_succeeded both say "paid".
    event = completed_event(stripe_api, pending)
    post_event(client, event)
    before = world(pending)
    late = stripe_api.event("checkout.session.async_payment_succeeded", event["data"]["object"])

    response = post_event(client, late)

    assert response.json()["outcome"] == "ignored"
    assert world(pending)[1:] == before[1:]


def test_a_checkout_paid_by_bank_debit_waits_until_the_payment_settles(client, stripe_api, pending):
    event = completed_event(stripe_api, pending, payment_status="unpaid")
    answer = post_event(client, event).json()
    assert (answer["outcome"], answer["message"]) == (
        "ignored",
        "pending; agent left pending_payment",
    )
    agent = Agent.objects.get(pk=pending.agent_id)
    assert (agent.status, agent.billing_active) == (S.PENDING_PAYMENT, False)

    settled = stripe_api.settle_payment(pending.stripe_checkout_session_id)
    assert post_event(client, settled).json()["outcome"] == "ok"
    agent = Agent.objects.get(pk=pending.agent_id)
    assert (agent.status, agent.billing_active) == (S.PROVISIONING, True)


def test_unknown_events_are_acknowledged_ignored_and_logged(client, stripe_api, caplog):
    event = stripe_api.event("customer.created", {"id": "cus_123", "object": "customer"})
    with caplog.at_level("INFO", logger="billing.events"):
        response = post_event(client, event)
    assert response.status_code == 200
    stored = StripeEvent.objects.get(pk=event["id"])
    assert stored.outcome == EventOutcome.IGNORED
    assert "customer.created is not an event this app acts on" in caplog.text


def test_an_event_that_contradicts_our_records_is_recorded_as_an_error(client, stripe_api, pending):
    event = completed_event(stripe_api, pending)
    event["data"]["object"]["id"] = "cs_test_not_the_one_we_opened"
    before = world(pending)

    response = post_event(client, event)

    assert response.status_code == 200  # sending it again would not help
    stored = StripeEvent.objects.get(pk=event["id"])
    assert stored.outcome == EventOutcome.ERROR
    assert "cs_test_not_the_one_we_opened names agent" in stored.message
    assert world(pending)[1:] == before[1:]


def test_a_handler_that_breaks_is_recorded_rolled_back_and_handled_again_on_redelivery(
    client, stripe_api, pending
):
    post_event(client, completed_event(stripe_api, pending))
    invoice = stripe_api.invoice_event("invoice.paid", _stripe_sub(pending))
    # A renewal without the period it pays for: the handler cannot work it out.
    del invoice["data"]["object"]["period_end"]
    invoice["data"]["object"]["lines"]["data"] = []
    before = world(pending)

    first = post_event(client, invoice)
    second = post_event(client, invoice)

    assert (first.status_code, second.status_code) == (500, 500)  # Stripe will send it again
    stored = StripeEvent.objects.get(pk=invoice["id"])
    assert (stored.outcome, stored.attempts) == (EventOutcome.ERROR, 2)
    assert "KeyError" in stored.message
    assert world(pending)[1:] == before[1:]


def _stripe_sub(subscription: Subscription) -> str:
    subscription.refresh_from_db()
    return subscription.stripe_subscription_id


# --- Expired checkouts, invoices, cancellations -------------------------------------------------


def test_an_expired_checkout_deletes_the_agent_that_waited_for_payment(client, stripe_api, pending):
    event = stripe_api.expire_checkout(pending.stripe_checkout_session_id)
    assert post_event(client, event).json()["outcome"] == "ok"
    agent = Agent.objects.get(pk=pending.agent_id)
    assert (agent.status, agent.status_reason) == (S.DELETED, "checkout expired unpaid")
    pending.refresh_from_db()
    assert pending.status == SubscriptionStatus.CANCELED


def test_a_paid_invoice_starts_a_new_billing_period_once_and_in_order(client, stripe_api, pending):
    post_event(client, completed_event(stripe_api, pending))
    first = stripe_api.invoice_event(
        "invoice.paid", _stripe_sub(pending), billing_reason="subscription_create"
    )
    post_event(client, first)
    Agent.objects.filter(pk=pending.agent_id).update(cost_this_period=Decimal("3.21"))

    renewal = stripe_api.invoice_event("invoice.paid", _stripe_sub(pending))
    response = post_event(client, renewal)

    assert response.json()["outcome"] == "ok"
    agent = Agent.objects.get(pk=pending.agent_id)
    period_start = renewal["data"]["object"]["lines"]["data"][0]["period"]["start"]
    assert agent.period_started_at == dt.datetime.fromtimestamp(period_start, tz=dt.UTC)
    assert agent.cost_this_period == 0
    assert "the last one cost $3.21" in agent.events.last().reason

    # The first invoice, delivered again under a new event id, is older: no reset.
    Agent.objects.filter(pk=pending.agent_id).update(cost_this_period=Decimal("1.00"))
    late = stripe_api.event("invoice.paid", first["data"]["object"])
    assert "period already started" in post_event(client, late).json()["message"]
    agent.refresh_from_db()
    assert agent.cost_this_period == Decimal("1.00")


def test_an_invoice_that_arrives_before_its_checkout_is_matched_by_its_metadata(
    client, stripe_api, pending
):
    completed = completed_event(stripe_api, pending)
    invoice = stripe_api.invoice_event(
        "invoice.paid",
        completed["data"]["object"]["subscription"],
        billing_reason="subscription_create",
    )
    assert post_event(client, invoice).json()["outcome"] == "ok"
    agent = Agent.objects.get(pk=pending.agent_id)
    assert agent.period_started_at is not None
    # The subscription Stripe reports is active: the invoice alone deploys the agent.
    assert agent.status == S.PROVISIONING
    pending.refresh_from_db()
    assert pending.stripe_subscription_id == completed["data"]["object"]["subscription"]

    assert post_event(client, completed).json()["outcome"] == "ignored"
    assert agent.events.filter(to_status=S.PROVISIONING).count() == 1


def test_a_payment_for_an_agent_given_up_meanwhile_is_flagged_for_a_refund(
    client, stripe_api, pending
):
    # Say the events crossed: Stripe's "expired" handled first, then it was paid.
    post_event(client, stripe_api.expire_checkout(pending.stripe_checkout_session_id))

    response = post_event(client, completed_event(stripe_api, pending))

    assert response.status_code == 200
    assert response.json()["outcome"] == "error"
    assert "refund it at Stripe" in response.json()["message"]
    assert Agent.objects.get(pk=pending.agent_id).status == S.DELETED


def test_a_failed_payment_pauses_the_agent_with_a_reason_its_owner_sees(
    client, stripe_api, pending
):
    post_event(client, completed_event(stripe_api, pending))
    retry_at = int(time.time()) + 3 * 86_400
    failed = stripe_api.invoice_event(
        "invoice.payment_failed", _stripe_sub(pending), next_payment_attempt=retry_at
    )

    response = post_event(client, failed)

    assert response.json()["outcome"] == "ok"
    agent = Agent.objects.get(pk=pending.agent_id)
    assert agent.status == S.PAUSED
    number = failed["data"]["object"]["number"]
    when = dt.datetime.fromtimestamp(retry_at, tz=dt.UTC)
    assert agent.status_reason == (
        f"Payment failed for invoice {number}; Stripe will try again on {when:%d %b %Y}. "
        "Update your card under Manage billing to resume the agent sooner."
    )
    pending.refresh_from_db()
    assert pending.status == SubscriptionStatus.PAST_DUE

    paid = stripe_api.invoice_event("invoice.paid", _stripe_sub(pending))
    assert "agent resuming" in post_event(client, paid).json()["message"]
    pending.refresh_from_db()
    assert pending.status == SubscriptionStatus.ACTIVE


def test_a_deleted_subscription_ends_it_and_revokes_the_agent_token_at_once(
    client, stripe_api, pending
):
    from agents.tokens import issue_agent_token, token_agent

    post_event(client, completed_event(stripe_api, pending))
    token = issue_agent_token(agent=Agent.objects.get(pk=pending.agent_id))

    deleted = stripe_api.subscription_deleted(_stripe_sub(pending))
    assert post_event(client, deleted).json()["outcome"] == "ok"

    pending.refresh_from_db()
    assert pending.status == SubscriptionStatus.CANCELED
    assert token_agent(token) is None  # the gateway refuses its next call
    again = stripe_api.event("customer.subscription.deleted", deleted["data"]["object"])
    assert post_event(client, again).json()["outcome"] == "ignored"


def test_events_about_someone_elses_objects_are_ignored(client, stripe_api):
    for event in (
        stripe_api.event(
            "checkout.session.completed",
            {"id": "cs_test_other", "mode": "subscription", "client_reference_id": "shop-42"},
        ),
        stripe_api.event(
            "customer.subscription.deleted", {"id": "sub_other", "metadata": {"agent_id": "x"}}
        ),
    ):
        response = post_event(client, event)
        assert response.json()["outcome"] == "ignored"
