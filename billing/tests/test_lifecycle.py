"""Stripe events, signed and posted to the real endpoint, drive agents on a real dockerd.

Celery runs eagerly in tests, and these tests commit for real, so the deploy
(or tear-down) queued by a webhook runs when its transaction commits, as it
would on a worker.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from agents.models import Agent, AgentStatus
from billing.models import StripeEvent, Subscription, SubscriptionStatus
from billing.tests.helpers import checkout, post_event
from droplets.containers import container_state
from droplets.docker_client import DropletError
from droplets.models import Droplet

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]
S = AgentStatus


def our_containers(engines, agent: Agent) -> list:
    return engines["d1"].containers.list(all=True, filters={"label": f"saferclaw.agent={agent.pk}"})


def paid(client, stripe_api, subscription: Subscription):
    event = stripe_api.complete_checkout(subscription.stripe_checkout_session_id)
    return event, post_event(client, event)


def test_a_signed_checkout_completed_runs_the_agent_on_a_droplet(
    client, stripe_api, plan, alice, local_droplet, engines
):
    subscription = checkout(alice, plan)

    _, response = paid(client, stripe_api, subscription)

    assert response.status_code == 200
    agent = Agent.objects.get(pk=subscription.agent_id)
    assert agent.status == S.RUNNING
    assert agent.droplet_id == local_droplet.pk
    state = container_state(local_droplet, agent.container_id)
    assert state.running
    attrs = engines["d1"].api.inspect_container(agent.container_id)
    assert attrs["HostConfig"]["Memory"] == 256 * 1024**2  # the plan's memory limit
    assert attrs["HostConfig"]["PidsLimit"] == 64
    local_droplet.refresh_from_db()
    assert local_droplet.active_container_count == 1
    assert [(e.source, e.to_status, e.reason) for e in agent.events.all()] == [
        ("owner", "pending_payment", "created"),
        ("stripe", "", "billing active: subscription active (payment received)"),
        ("stripe", "provisioning", "payment received"),
        ("billing", "running", f"running on {local_droplet.name}"),
    ]


def test_the_same_event_delivered_twice_deploys_once(
    client, stripe_api, plan, alice, local_droplet, engines
):
    subscription = checkout(alice, plan)
    event, _ = paid(client, stripe_api, subscription)

    again = post_event(client, event)

    assert again.json() == {"received": True, "duplicate": True}
    agent = Agent.objects.get(pk=subscription.agent_id)
    assert len(our_containers(engines, agent)) == 1
    assert agent.events.filter(to_status=S.RUNNING).count() == 1
    assert Droplet.objects.get(pk=local_droplet.pk).active_container_count == 1


def test_two_concurrent_deliveries_of_the_same_event_deploy_once(
    stripe_api, plan, alice, local_droplet, engines
):
    subscription = checkout(alice, plan)
    event = stripe_api.complete_checkout(subscription.stripe_checkout_session_id)
    start = threading.Barrier(2)
    answers: list[dict] = []

    def deliver() -> None:
        try:
            start.wait(timeout=10)
            answers.append(post_event(Client(), event).json())
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert sorted(answer.get("duplicate", False) for answer in answers) == [False, True]
    agent = Agent.objects.get(pk=subscription.agent_id)
    assert agent.status == S.RUNNING
    assert len(our_containers(engines, agent)) == 1
    assert agent.events.filter(to_status=S.PROVISIONING).count() == 1
    assert Droplet.objects.get(pk=local_droplet.pk).active_container_count == 1
    assert StripeEvent.objects.get(pk=event["id"]).attempts == 1


def test_a_deleted_subscription_removes_the_container_and_frees_the_slot(
    client, stripe_api, plan, alice, local_droplet, engines
):
    subscription = checkout(alice, plan)
    paid(client, stripe_api, subscription)
    agent = Agent.objects.get(pk=subscription.agent_id)
    container_id = agent.container_id
    subscription.refresh_from_db()

    response = post_event(
        client, stripe_api.subscription_deleted(subscription.stripe_subscription_id)
    )

    assert response.json()["outcome"] == "ok"
    agent.refresh_from_db()
    assert (agent.status, agent.droplet_id, agent.container_id) == (S.DELETED, None, "")
    with pytest.raises(DropletError) as excinfo:
        container_state(local_droplet, container_id)
    assert excinfo.value.not_found
    assert Droplet.objects.get(pk=local_droplet.pk).active_container_count == 0
    assert agent.tokens.filter(revoked_at__isnull=True).count() == 0
    assert agent.events.last().source == "stripe"
    assert not stripe_api.calls(
        f"/v1/subscriptions/{subscription.stripe_subscription_id}", "DELETE"
    )


def test_a_failed_payment_pauses_the_agent_and_the_next_payment_resumes_it(
    client, stripe_api, plan, alice, local_droplet
):
    subscription = checkout(alice, plan)
    paid(client, stripe_api, subscription)
    subscription.refresh_from_db()
    agent = Agent.objects.get(pk=subscription.agent_id)

    failed = stripe_api.invoice_event("invoice.payment_failed", subscription.stripe_subscription_id)
    post_event(client, failed)

    agent.refresh_from_db()
    assert agent.status == S.PAUSED
    assert agent.status_reason.startswith("Payment failed for invoice ")
    assert container_state(local_droplet, agent.container_id).status == "exited"
    assert Droplet.objects.get(pk=local_droplet.pk).active_container_count == 1  # slot kept
    client.force_login(alice)
    state = client.get(reverse("billing:agent-status", args=[agent.pk])).json()
    assert (state["label"], state["reason"]) == ("Paused (payment failed)", agent.status_reason)

    post_event(
        client, stripe_api.invoice_event("invoice.paid", subscription.stripe_subscription_id)
    )

    agent.refresh_from_db()
    assert agent.status == S.RUNNING
    assert container_state(local_droplet, agent.container_id).running


def test_development_mode_runs_the_whole_journey_without_keys(
    client, dev_mode, alice, local_droplet, engines
):
    from billing.tests.factories import PlanFactory

    plan = PlanFactory(name="Free trial", stripe_price_id="")
    client.force_login(alice)
    home = client.get(reverse("dashboard:home")).content.decode()
    assert "Development mode:" in home
    assert reverse("billing:new-agent") in home
    chooser = client.get(reverse("billing:new-agent")).content.decode()
    assert "Start agent (development mode, no payment)" in chooser

    response = client.post(
        reverse("billing:new-agent"),
        {"plan": plan.pk, "name": "my agent", "provider": "anthropic", "provider_key": ""},
    )

    agent = Agent.objects.get(owner=alice, name="my agent")
    assert response.status_code == 303
    assert response["Location"] == f"http://testserver/billing/agents/{agent.pk}/"
    assert agent.status == S.RUNNING
    assert container_state(local_droplet, agent.container_id).running
    subscription = Subscription.objects.get(agent=agent)
    assert (subscription.status, subscription.dev_mode) == (SubscriptionStatus.ACTIVE, True)
    page = client.get(response["Location"]).content.decode()
    assert "Development mode:" in page
    assert client.get(reverse("billing:agent-status", args=[agent.pk])).json()["status"] == (
        "running"
    )
    assert "development mode: plan activated without payment" in [
        e.reason for e in agent.events.all()
    ]

    client.post(reverse("billing:dev-cancel", args=[agent.pk]))

    agent.refresh_from_db()
    assert agent.status == S.DELETED
    assert our_containers(engines, agent) == []
    assert Droplet.objects.get(pk=local_droplet.pk).active_container_count == 0


def test_an_agent_deleted_through_the_api_stops_being_billed(
    client, stripe_api, plan, alice, local_droplet, engines
):
    subscription = checkout(alice, plan)
    paid(client, stripe_api, subscription)
    subscription.refresh_from_db()
    client.force_login(alice)

    response = client.delete(f"/api/agents/{subscription.agent_id}/")

    assert response.status_code == 204
    (cancel,) = stripe_api.calls(
        f"/v1/subscriptions/{subscription.stripe_subscription_id}", "DELETE"
    )
    assert cancel.headers["authorization"] == f"Bearer {stripe_api.api_key}"
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.CANCELED
    # Stripe then confirms; there is nothing left to do.
    deleted = stripe_api.subscription_deleted(subscription.stripe_subscription_id)
    assert post_event(client, deleted).json()["outcome"] == "ignored"
    assert Droplet.objects.get(pk=local_droplet.pk).active_container_count == 0
