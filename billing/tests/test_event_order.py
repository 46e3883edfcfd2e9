"""Any delivery order of a billing period's Stripe events ends in the state Stripe has.

Stripe neither orders nor deduplicates events across types, so handlers act on
the subscription as Stripe's API reports it when they run (billing.events).
The events of one billing period are made at the fake Stripe in the order they
happen there, then each is signed and posted to the real endpoint, in every
order. The realistic set is a monthly subscription whose renewal charge fails,
which is where order matters:

- "retry pays": checkout.session.completed, invoice.paid (the first invoice),
  invoice.payment_failed (the renewal), invoice.paid (the same renewal
  invoice, paid by Stripe's retry);
- "retries run out": the same three, then customer.subscription.deleted;
- "still unpaid": the same three, and nothing since.

(customer.subscription.updated, which Stripe sends with each status change,
goes through the same handler and changes no outcome, so it is left out: it
would make 5,040 orders of the first set.)

Two timings are tested. Late delivery: everything has happened at Stripe
before the first event arrives, as when deliveries were held up; the final
database state is checked exactly, with the Celery work each order queued.
Interleaved (on a real Docker engine): each event arrives after it happened
and in any order relative to the others, and the queued work runs, so the
agent's container is checked too.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from agents.models import Agent, AgentStatus
from billing.models import EventOutcome, StripeEvent, Subscription, SubscriptionStatus
from billing.tests.fake_stripe import FakeStripe
from billing.tests.helpers import checkout, post_event
from droplets.containers import container_state
from droplets.models import Droplet
from droplets.tests.factories import DropletFactory

S = AgentStatus
COMPLETED = "checkout.session.completed"
FIRST_PAID = "invoice.paid (first)"
RENEWAL_FAILED = "invoice.payment_failed (renewal)"
RENEWAL_PAID = "invoice.paid (renewal, retried)"
CANCELED = "customer.subscription.deleted"


@dataclass(frozen=True)
class Scenario:
    steps: tuple[str, ...]  # in the order they happen at Stripe
    subscription: str
    billing_active: bool
    period: str | None  # whose invoice's period the cost counter ends on


SCENARIOS = {
    "retry pays": Scenario(
        (COMPLETED, FIRST_PAID, RENEWAL_FAILED, RENEWAL_PAID),
        SubscriptionStatus.ACTIVE,
        True,
        RENEWAL_PAID,
    ),
    "retries run out": Scenario(
        (COMPLETED, FIRST_PAID, RENEWAL_FAILED, CANCELED),
        SubscriptionStatus.CANCELED,
        False,
        None,
    ),
    "still unpaid": Scenario(
        (COMPLETED, FIRST_PAID, RENEWAL_FAILED),
        SubscriptionStatus.PAST_DUE,
        False,
        FIRST_PAID,
    ),
}
CASES = [
    pytest.param(scenario, order, id=f"{name}: {' > '.join(order)}")
    for name, scenario in SCENARIOS.items()
    for order in itertools.permutations(scenario.steps)
]


class BillingPeriod:
    """Makes a period's events at the fake Stripe, each step in its turn."""

    def __init__(self, stripe_api: FakeStripe, subscription: Subscription) -> None:
        self.stripe = stripe_api
        self.subscription = subscription
        self.events: dict[str, dict[str, Any]] = {}
        self._makers: dict[str, Callable[[], dict[str, Any]]] = {
            COMPLETED: self._complete,
            FIRST_PAID: lambda: self.stripe.invoice_event(
                "invoice.paid", self._stripe_id(), billing_reason="subscription_create"
            ),
            RENEWAL_FAILED: lambda: self.stripe.invoice_event(
                "invoice.payment_failed",
                self._stripe_id(),
                next_payment_attempt=int(time.time()) + 3 * 86_400,
            ),
            RENEWAL_PAID: lambda: self.stripe.pay_invoice(self.events[RENEWAL_FAILED]),
            CANCELED: lambda: self.stripe.subscription_deleted(self._stripe_id()),
        }

    def happen_until(self, step: str, steps: tuple[str, ...]) -> dict[str, Any]:
        """Make every step up to ``step`` that has not happened yet; its event."""
        for name in steps[: steps.index(step) + 1]:
            if name not in self.events:
                self.events[name] = self._makers[name]()
        return self.events[step]

    def period_start(self, step: str) -> int:
        invoice = self.events[step]["data"]["object"]
        return invoice["lines"]["data"][0]["period"]["start"]

    def _complete(self) -> dict[str, Any]:
        return self.stripe.complete_checkout(self.subscription.stripe_checkout_session_id)

    def _stripe_id(self) -> str:
        return self.events[COMPLETED]["data"]["object"]["subscription"]


def deliver(client, period: BillingPeriod, order: tuple[str, ...], steps: tuple[str, ...]) -> None:
    for step in order:
        response = post_event(client, period.happen_until(step, steps))
        assert response.status_code == 200, response.content


def assert_every_event_handled_once(period: BillingPeriod) -> None:
    stored = StripeEvent.objects.filter(pk__in=[e["id"] for e in period.events.values()])
    assert sorted(stored.values_list("attempts", flat=True)) == [1] * len(period.events)
    assert not stored.filter(outcome=EventOutcome.ERROR).exists(), list(
        stored.values_list("type", "message")
    )


@pytest.mark.django_db
@pytest.mark.parametrize(("scenario", "order"), CASES)
def test_late_deliveries_in_any_order_end_as_stripe_has_it(
    client, stripe_api, plan, alice, scenario, order, django_capture_on_commit_callbacks
):
    subscription = checkout(alice, plan)
    period = BillingPeriod(stripe_api, subscription)
    for step in scenario.steps:  # everything happens at Stripe first
        period.happen_until(step, scenario.steps)

    with django_capture_on_commit_callbacks() as queued:
        deliver(client, period, order, scenario.steps)

    subscription.refresh_from_db()
    agent = Agent.objects.get(pk=subscription.agent_id)
    assert subscription.status == scenario.subscription
    assert subscription.stripe_subscription_id == period._stripe_id()
    assert agent.billing_active is scenario.billing_active
    work = [callback.__qualname__.split("(")[0] for callback in queued]
    moves = list(agent.events.exclude(to_status="").values_list("to_status", flat=True))
    if scenario.subscription == SubscriptionStatus.ACTIVE:
        # Deployed once (the deploy runs after commit, which a test transaction never reaches).
        assert (agent.status, moves) == (S.PROVISIONING, [S.PENDING_PAYMENT, S.PROVISIONING])
        assert work == ["enqueue billing.tasks.deploy_paid_agent"]
    elif scenario.subscription == SubscriptionStatus.CANCELED:
        assert (agent.status, moves) == (S.DELETED, [S.PENDING_PAYMENT, S.DELETED])
        assert work == []  # nothing ever ran, nothing to tear down
    else:
        assert (agent.status, moves) == (S.PENDING_PAYMENT, [S.PENDING_PAYMENT])
        assert work == []
    if scenario.period is None:
        assert agent.period_started_at is None
    else:
        assert agent.period_started_at.timestamp() == period.period_start(scenario.period)
    assert_every_event_handled_once(period)


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("scenario", "order"), CASES)
def test_interleaved_deliveries_in_any_order_leave_the_agent_as_stripe_has_it(
    client, stripe_api, plan, alice, local_droplet, engines, scenario, order
):
    subscription = checkout(alice, plan)
    period = BillingPeriod(stripe_api, subscription)

    deliver(client, period, order, scenario.steps)  # each event after it happened

    subscription.refresh_from_db()
    agent = Agent.objects.get(pk=subscription.agent_id)
    assert subscription.status == scenario.subscription
    assert agent.billing_active is scenario.billing_active
    ours = engines["d1"].containers.list(all=True, filters={"label": f"saferclaw.agent={agent.pk}"})
    if scenario.subscription == SubscriptionStatus.ACTIVE:
        assert agent.status == S.RUNNING
        assert [c.id for c in ours] == [agent.container_id]
        assert container_state(local_droplet, agent.container_id).running
    elif scenario.subscription == SubscriptionStatus.CANCELED:
        assert (agent.status, ours) == (S.DELETED, [])
        assert Droplet.objects.get(pk=local_droplet.pk).active_container_count == 0
    else:
        # Paused if it ran before the failure was known, never deployed otherwise.
        assert agent.status in (S.PAUSED, S.PENDING_PAYMENT)
        assert not any(container_state(local_droplet, c.id).running for c in ours)
    assert_every_event_handled_once(period)


# --- The case the issue reported, and the status-change event --------------------------------


@pytest.fixture
def running(client, stripe_api, plan, alice) -> tuple[Subscription, Agent]:
    """Alice's paid agent, running (on a droplet whose engine is not needed here)."""
    subscription = checkout(alice, plan)
    post_event(client, stripe_api.complete_checkout(subscription.stripe_checkout_session_id))
    agent = Agent.objects.get(pk=subscription.agent_id)
    agent.transition(S.RUNNING, source="test", droplet=DropletFactory(), container_id="c" * 64)
    subscription.refresh_from_db()
    return subscription, agent


@pytest.mark.django_db
def test_a_payment_failure_delivered_after_its_invoice_was_paid_leaves_the_agent_running(
    client, stripe_api, running
):
    subscription, agent = running
    failed = stripe_api.invoice_event("invoice.payment_failed", subscription.stripe_subscription_id)
    paid = stripe_api.pay_invoice(failed)

    renewal = dt.datetime.fromtimestamp(
        paid["data"]["object"]["lines"]["data"][0]["period"]["start"], tz=dt.UTC
    )
    answer = post_event(client, paid).json()
    assert (answer["outcome"], answer["message"]) == (
        "ok",
        f"active; agent left running; period from {renewal:%Y-%m-%d}",  # the cost cap's
    )
    answer = post_event(client, failed).json()

    assert (answer["outcome"], answer["message"]) == ("ignored", "active; agent left running")
    agent.refresh_from_db()
    assert (agent.status, agent.billing_active) == (S.RUNNING, True)
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.ACTIVE
    # Both handlers asked Stripe rather than trusting the event.
    gets = stripe_api.calls(f"/v1/subscriptions/{subscription.stripe_subscription_id}", "GET")
    assert len(gets) == 3  # the checkout's, then one per invoice event


@pytest.mark.django_db
def test_a_subscription_updated_to_past_due_pauses_and_back_to_active_resumes(
    client, stripe_api, running
):
    subscription, agent = running
    stripe_api.subscriptions[subscription.stripe_subscription_id]["status"] = "past_due"
    answer = post_event(
        client, stripe_api.subscription_updated(subscription.stripe_subscription_id)
    )
    assert answer.json()["outcome"] == "ok"
    agent.refresh_from_db()
    assert (agent.status, agent.billing_active) == (S.PAUSED, False)
    assert agent.status_reason.startswith("The subscription's last payment failed.")

    stripe_api.subscriptions[subscription.stripe_subscription_id]["status"] = "active"
    answer = post_event(
        client, stripe_api.subscription_updated(subscription.stripe_subscription_id)
    )
    assert answer.json()["message"] == "active; agent resuming"
    assert Agent.objects.get(pk=agent.pk).billing_active is True


@pytest.mark.django_db
def test_a_stripe_that_cannot_be_asked_gets_the_event_again_later(client, stripe_api, running):
    subscription, agent = running
    failed = stripe_api.invoice_event("invoice.payment_failed", subscription.stripe_subscription_id)
    stripe_api.fail_with = 503

    response = post_event(client, failed)

    assert response.status_code == 500  # Stripe sends it again
    assert StripeEvent.objects.get(pk=failed["id"]).outcome == EventOutcome.ERROR
    assert Agent.objects.get(pk=agent.pk).status == S.RUNNING  # nothing changed meanwhile
    stripe_api.fail_with = None
    assert post_event(client, failed).json()["outcome"] == "ok"
    assert Agent.objects.get(pk=agent.pk).status == S.PAUSED
