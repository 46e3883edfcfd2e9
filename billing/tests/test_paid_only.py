"""Only a paid agent runs (DESIGN.md trust boundary 5): every path to a container
refuses an agent whose subscription is not active, and billing keeps
``Agent.billing_active`` in step with the subscription.

The paths: the API's start (an unpaid agent killed then started; an agent
paused for a failed payment), the operator's deploy_agent, the admin's
retry, the beat that resumes agents paused at a cap. Reconciliation's
backstop and the services themselves are tested in agents/tests.
"""

from __future__ import annotations

import datetime as dt
import io

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from agents.kill_switch import kill_agent
from agents.models import Agent, AgentEvent, AgentStatus
from agents.services import create_agent
from billing.models import Subscription, SubscriptionStatus
from billing.tests.factories import PlanFactory
from billing.tests.helpers import checkout, post_event
from droplets.containers import container_state
from droplets.models import Droplet
from droplets.tests.factories import DropletFactory
from gateway.metering import pause_for_cap
from gateway.tasks import resume_agents_below_caps

S = AgentStatus


def api_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {AuthToken.objects.create(user)[1]}")
    return client


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


@pytest.fixture
def dead_droplet(db) -> Droplet:
    """A droplet with room whose engine does not answer: whatever tries to run a
    container there gets as far as the droplet, and no further."""
    return DropletFactory(docker_url="unix:///run/saferclaw-test-no-such-engine/docker.sock")


def trail(agent: Agent) -> list[tuple[str, str]]:
    return list(AgentEvent.objects.filter(agent=agent).values_list("source", "to_status"))


# --- The API ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_unpaid_agent_killed_with_its_own_secret_cannot_then_be_started(
    stripe_api, plan, alice, dead_droplet
):
    client = api_client(alice)
    created = client.post(
        "/api/agents/", {"plan": plan.name, "name": "free-ride"}, format="json"
    ).json()
    agent = Agent.objects.get(pk=created["id"])
    kill_agent(agent=agent, source="kill_switch", reason="killed with the owner's secret")
    before = trail(agent)

    response = client.post(f"/api/agents/{agent.pk}/start")

    assert response.status_code == 402
    assert error_of(response) == {
        "code": "payment_required",
        "message": "agent is killed; it cannot go to running because nothing pays for it: "
        "its subscription is not active",
    }
    agent.refresh_from_db()
    assert (agent.status, agent.droplet_id, agent.billing_active) == (S.KILLED, None, False)
    assert trail(agent) == before
    assert not agent.tokens.exists()
    assert Droplet.objects.get(pk=dead_droplet.pk).active_container_count == 0
    # What an unpaid agent can do is go: its checkout is closed and it is deleted.
    assert client.delete(f"/api/agents/{agent.pk}/").status_code == 204
    assert Agent.objects.get(pk=agent.pk).status == S.DELETED


@pytest.mark.django_db
def test_an_unpaid_agent_awaiting_payment_cannot_be_started(stripe_api, plan, alice):
    subscription = checkout(alice, plan)
    response = api_client(alice).post(f"/api/agents/{subscription.agent_id}/start")
    assert response.status_code == 402
    assert error_of(response)["code"] == "payment_required"
    assert Agent.objects.get(pk=subscription.agent_id).status == S.PENDING_PAYMENT


@pytest.mark.django_db
def test_an_agent_paused_for_a_failed_payment_cannot_be_started_by_its_owner(
    client, stripe_api, plan, alice, dead_droplet
):
    subscription = checkout(alice, plan)
    post_event(client, stripe_api.complete_checkout(subscription.stripe_checkout_session_id))
    agent = Agent.objects.get(pk=subscription.agent_id)
    # As its deploy leaves it (the queued deploy does not run in this transaction).
    agent.transition(S.RUNNING, source="test", droplet=dead_droplet, container_id="c" * 64)
    subscription.refresh_from_db()
    failed = stripe_api.invoice_event("invoice.payment_failed", subscription.stripe_subscription_id)
    assert post_event(client, failed).json()["outcome"] == "ok"
    agent.refresh_from_db()
    assert (agent.status, agent.billing_active) == (S.PAUSED, False)

    response = api_client(alice).post(f"/api/agents/{agent.pk}/start")

    assert response.status_code == 402
    assert error_of(response)["code"] == "payment_required"
    agent.refresh_from_db()
    assert agent.status == S.PAUSED
    assert agent.status_reason.startswith("Payment failed for invoice ")


# --- Billing keeps billing_active in step -------------------------------------------------


@pytest.mark.django_db
def test_billing_active_follows_the_subscription_through_payment_failure_and_end(
    client, stripe_api, plan, alice
):
    subscription = checkout(alice, plan)
    agent = Agent.objects.get(pk=subscription.agent_id)
    assert agent.billing_active is False

    post_event(client, stripe_api.complete_checkout(subscription.stripe_checkout_session_id))
    agent.refresh_from_db()
    assert (agent.billing_active, agent.status) == (True, S.PROVISIONING)

    subscription.refresh_from_db()
    stripe_id = subscription.stripe_subscription_id
    post_event(client, stripe_api.invoice_event("invoice.payment_failed", stripe_id))
    agent.refresh_from_db()
    # One event, one transaction: paused and no longer paid for together.
    assert (agent.billing_active, agent.status) == (False, S.PAUSED)
    flag, pause = list(agent.events.all())[-2:]
    assert (flag.source, flag.to_status) == ("stripe", "")
    assert flag.reason.startswith("billing inactive: subscription past_due (Payment failed")
    assert (pause.to_status, pause.reason) == (S.PAUSED, agent.status_reason)

    post_event(client, stripe_api.invoice_event("invoice.paid", stripe_id))
    agent.refresh_from_db()
    assert agent.billing_active is True

    post_event(client, stripe_api.subscription_deleted(stripe_id))
    agent.refresh_from_db()
    assert agent.billing_active is False
    assert Subscription.objects.get(pk=subscription.pk).status == SubscriptionStatus.CANCELED


@pytest.mark.django_db
def test_development_mode_subscriptions_pay(dev_mode, alice):
    plan = PlanFactory(stripe_price_id="")
    agent = checkout(alice, plan).agent
    agent.refresh_from_db()
    assert (agent.billing_active, agent.status) == (True, S.PROVISIONING)


@pytest.mark.django_db
def test_the_migration_sets_billing_active_from_each_agents_subscription(stripe_api, plan, alice):
    from importlib import import_module

    from django.apps import apps

    migration = import_module("billing.migrations.0006_agents_billing_active_from_subscriptions")
    statuses = {
        "active": SubscriptionStatus.ACTIVE,
        "pending": SubscriptionStatus.PENDING,
        "past-due": SubscriptionStatus.PAST_DUE,
        "canceled": SubscriptionStatus.CANCELED,
    }
    plan.max_agents = 9
    plan.save()
    for name, status in statuses.items():
        subscription = checkout(alice, plan, name)
        Subscription.objects.filter(pk=subscription.pk).update(status=status)
    Agent.objects.filter(name="active").update(billing_active=False)
    Agent.objects.filter(name="past-due").update(billing_active=True)
    bare = create_agent(owner=alice, name="no-subscription")
    Agent.objects.filter(pk=bare.pk).update(billing_active=True)

    migration.billing_active_from_subscriptions(apps, None)

    paid = dict(Agent.objects.values_list("name", "billing_active"))
    assert paid == {
        "active": True,
        "pending": False,
        "past-due": False,
        "canceled": False,
        "no-subscription": False,
    }


# --- Operators ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_deploy_agent_refuses_an_agent_nothing_pays_for(alice, dead_droplet):
    agent = create_agent(owner=alice, name="unpaid", provider_key="sk-test")

    with pytest.raises(CommandError, match="nothing pays for it"):
        call_command("deploy_agent", str(agent.pk), stdout=io.StringIO())

    agent.refresh_from_db()
    assert (agent.status, agent.droplet_id) == (S.PENDING_PAYMENT, None)
    assert not agent.tokens.exists()
    assert Droplet.objects.get(pk=dead_droplet.pk).active_container_count == 0


@pytest.mark.django_db
def test_retrying_from_admin_refuses_an_agent_nothing_pays_for(admin_client, alice):
    agent = create_agent(owner=alice, name="helper", provider_key="sk-test")
    Agent.objects.filter(pk=agent.pk).update(status=S.FAILED, status_reason="deploy failed: x")

    response = admin_client.post(
        reverse("admin:billing_failedagent_changelist"),
        {"action": "retry_deploys", "_selected_action": [str(agent.pk)]},
        follow=True,
    )

    assert "Helper not retried: nothing pays for it: it has no subscription" in (
        response.content.decode()
    )
    agent.refresh_from_db()
    assert agent.status == S.FAILED
    assert not agent.events.filter(to_status=S.PROVISIONING).exists()


# --- Celery tasks ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_queued_deploy_of_an_agent_nothing_pays_for_places_nothing(alice, dead_droplet, caplog):
    from billing.tasks import deploy_paid_agent

    agent = create_agent(owner=alice, name="unpaid", provider_key="sk-test")
    # Queued while it was paid for; the payment lapsed before the worker took it.
    Agent.objects.filter(pk=agent.pk).update(status=S.PROVISIONING)

    with caplog.at_level("INFO", logger="billing.tasks"):
        deploy_paid_agent.delay(str(agent.pk))

    assert "nothing pays for it" in caplog.text
    agent.refresh_from_db()
    assert (agent.droplet_id, agent.container_id) == (None, "")
    assert not agent.tokens.exists()
    assert Droplet.objects.get(pk=dead_droplet.pk).active_container_count == 0


# --- The beat that resumes agents paused at a cap -------------------------------------------


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_the_beat_does_not_resume_a_capped_agent_whose_payment_failed(
    client, stripe_api, plan, alice, local_droplet
):
    subscription = checkout(alice, plan)
    post_event(client, stripe_api.complete_checkout(subscription.stripe_checkout_session_id))
    agent = Agent.objects.get(pk=subscription.agent_id)
    assert agent.status == S.RUNNING  # the deploy ran when the event committed
    pause_for_cap(agent, "daily token cap of 100,000 tokens reached")
    agent.refresh_from_db()
    assert not container_state(local_droplet, agent.container_id).running
    subscription.refresh_from_db()
    failed = stripe_api.invoice_event("invoice.payment_failed", subscription.stripe_subscription_id)
    assert post_event(client, failed).json()["message"] == "past due; agent left paused"
    # A new UTC day: the cap has room again.
    yesterday = timezone.now().date() - dt.timedelta(days=1)
    Agent.objects.filter(pk=agent.pk).update(tokens_today=100_000, tokens_day=yesterday)

    resume_agents_below_caps.delay()

    agent.refresh_from_db()
    assert (agent.status, agent.billing_active) == (S.PAUSED, False)
    assert not container_state(local_droplet, agent.container_id).running
    last_move = agent.events.exclude(to_status="").last()
    assert (last_move.source, last_move.to_status) == ("gateway", S.PAUSED)  # nothing after it

    # Paid again: the beat may resume it now (billing leaves a cap's pause alone).
    post_event(
        client, stripe_api.invoice_event("invoice.paid", subscription.stripe_subscription_id)
    )
    assert Agent.objects.get(pk=agent.pk).status == S.PAUSED
    resume_agents_below_caps.delay()
    agent.refresh_from_db()
    assert agent.status == S.RUNNING
    assert container_state(local_droplet, agent.container_id).running
