"""Choosing a plan, Stripe Checkout, the customer portal, leaving a checkout —
against a local server that speaks Stripe's wire format."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.checks import run_checks
from django.urls import reverse

from agents.models import Agent, AgentStatus
from billing.models import Customer, Subscription, SubscriptionStatus
from billing.tests.factories import PlanFactory
from billing.tests.helpers import checkout, post_event

pytestmark = pytest.mark.django_db
S = AgentStatus


def choose(client, plan, name="helper", **extra):
    return client.post(
        reverse("billing:new-agent"),
        {"plan": plan.pk, "name": name, "provider": "openai", "provider_key": "sk-x", **extra},
    )


def test_choosing_a_plan_creates_the_agent_and_sends_its_owner_to_stripe_checkout(
    client, stripe_api, plan, alice
):
    client.force_login(alice)
    page = client.get(reverse("billing:new-agent"))
    assert plan.name in page.content.decode()
    assert "Continue to payment" in page.content.decode()

    response = choose(client, plan)

    agent = Agent.objects.get(owner=alice, name="helper")
    subscription = Subscription.objects.get(agent=agent)
    assert response.status_code == 303
    assert (
        response["Location"] == stripe_api.sessions[subscription.stripe_checkout_session_id]["url"]
    )
    assert agent.status == S.PENDING_PAYMENT
    assert subscription.status == SubscriptionStatus.PENDING

    (customer_call,) = stripe_api.calls("/v1/customers")
    assert customer_call.params == {"email": alice.email, "metadata": {"user_id": str(alice.pk)}}
    (session_call,) = stripe_api.calls("/v1/checkout/sessions")
    params = session_call.params
    agent_url = f"http://testserver/billing/agents/{agent.pk}/"
    assert params == {
        "mode": "subscription",
        "customer": subscription.stripe_customer_id,
        "client_reference_id": str(agent.pk),
        "line_items": [{"price": "price_starter", "quantity": "1"}],
        "metadata": {"agent_id": str(agent.pk), "plan": "Basic"},
        "subscription_data": {"metadata": {"agent_id": str(agent.pk), "plan": "Basic"}},
        "success_url": agent_url + "?session_id={CHECKOUT_SESSION_ID}",
        "cancel_url": f"http://testserver/billing/agents/{agent.pk}/checkout-canceled/",
    }
    assert session_call.headers["idempotency-key"] == f"saferclaw-checkout-{subscription.pk}"
    assert session_call.headers["authorization"] == f"Bearer {stripe_api.api_key}"


def test_an_agent_takes_its_limits_from_its_plan(stripe_api, plan, alice):
    agent = checkout(alice, plan).agent
    assert (agent.cpu_limit, agent.memory_limit, agent.pids_limit) == (Decimal("0.50"), "256m", 64)
    assert (agent.daily_token_cap, agent.monthly_cost_cap) == (100_000, Decimal("5.00"))
    assert (agent.max_tokens_per_request, agent.max_requests_per_minute) == (2048, 30)
    assert agent.allowed_tools == ["calendar.list_events"]


def test_one_stripe_customer_serves_every_checkout_of_a_user(stripe_api, plan, alice, bob):
    first = checkout(alice, plan, "one")
    second = checkout(alice, plan, "two")
    checkout(bob, plan, "one")

    assert first.stripe_customer_id == second.stripe_customer_id
    assert len(stripe_api.calls("/v1/customers")) == 2  # alice once, bob once
    assert Customer.objects.count() == 2


def test_a_plan_allows_only_its_number_of_agents(client, stripe_api, alice):
    plan = PlanFactory(max_agents=1)
    client.force_login(alice)
    choose(client, plan, "first")

    response = choose(client, plan, "second")

    assert response.status_code == 200
    assert "allows 1 agent(s), and you have them all" in response.content.decode()
    assert not Agent.objects.filter(name="second").exists()
    assert len(stripe_api.calls("/v1/checkout/sessions")) == 1


def test_a_checkout_stripe_refuses_leaves_no_agent_behind(client, stripe_api, alice):
    plan = PlanFactory(stripe_price_id="price_nobody_made")
    client.force_login(alice)

    response = choose(client, plan)

    assert response.status_code == 200
    assert "Stripe could not open the checkout, and nothing was charged" in (
        response.content.decode()
    )
    agent = Agent.objects.get(owner=alice)
    assert agent.status == S.DELETED
    assert "No such price: 'price_nobody_made'" in agent.status_reason
    assert Subscription.objects.get(agent=agent).status == SubscriptionStatus.CANCELED
    # The name is free again, and so is the place on the plan.
    plan.stripe_price_id = "price_starter"
    plan.save()
    assert choose(client, plan).status_code == 303


def test_a_bad_name_is_shown_on_the_form_and_nothing_reaches_stripe(
    client, stripe_api, plan, alice
):
    client.force_login(alice)
    checkout(alice, plan, "helper")
    calls = len(stripe_api.requests)

    response = choose(client, plan, "helper")

    assert response.status_code == 200
    assert "You already have an agent with this name." in response.content.decode()
    assert len(stripe_api.requests) == calls


def test_the_billing_link_opens_the_stripe_customer_portal(client, stripe_api, plan, alice):
    checkout(alice, plan)
    client.force_login(alice)

    response = client.post(reverse("billing:portal"))

    assert response.status_code == 303
    assert response["Location"].startswith("https://billing.stripe.com/p/session/test_")
    (call,) = stripe_api.calls("/v1/billing_portal/sessions")
    assert call.params == {
        "customer": Customer.objects.get(user=alice).stripe_customer_id,
        "return_url": "http://testserver/dashboard/",
    }


def test_the_portal_without_a_stripe_customer_says_so(client, stripe_api, alice):
    client.force_login(alice)
    response = client.post(reverse("billing:portal"), follow=True)
    assert "You have no billing account yet" in response.content.decode()
    assert not stripe_api.calls("/v1/billing_portal/sessions")


def test_the_agent_page_and_its_status_follow_payment_and_provisioning(
    client, stripe_api, plan, alice
):
    subscription = checkout(alice, plan)
    client.force_login(alice)
    status_url = reverse("billing:agent-status", args=[subscription.agent_id])

    agent_url = reverse("billing:agent", args=[subscription.agent_id])
    unpaid = client.get(agent_url).content.decode()
    assert "Not paid yet" in unpaid
    assert subscription.checkout_url in unpaid  # "Continue to payment"
    # Where Stripe sends the owner after paying, maybe before its event arrives:
    page = client.get(f"{agent_url}?session_id={subscription.stripe_checkout_session_id}")
    assert page.status_code == 200
    assert status_url in page.content.decode()
    assert "Waiting for Stripe to confirm your payment" in page.content.decode()
    assert "Not paid yet" not in page.content.decode()
    assert client.get(status_url).json() == {
        "id": str(subscription.agent_id),
        "name": "helper",
        "status": "pending_payment",
        "label": "Pending payment",
        "reason": "",
        "subscription": "pending",
        "dev_mode": False,
        "settled": False,
    }

    post_event(client, stripe_api.complete_checkout(subscription.stripe_checkout_session_id))
    state = client.get(status_url).json()
    assert (state["status"], state["subscription"], state["settled"]) == (
        "provisioning",
        "active",
        False,
    )


def test_leaving_checkout_then_discarding_closes_it_at_stripe_and_deletes_the_agent(
    client, stripe_api, plan, alice
):
    subscription = checkout(alice, plan)
    client.force_login(alice)
    page = client.get(reverse("billing:checkout-canceled", args=[subscription.agent_id]))
    assert "Nothing was charged" in page.content.decode()
    assert subscription.checkout_url in page.content.decode()

    response = client.post(reverse("billing:discard", args=[subscription.agent_id]))

    assert response.status_code == 302
    path = f"/v1/checkout/sessions/{subscription.stripe_checkout_session_id}/expire"
    assert len(stripe_api.calls(path)) == 1
    assert Agent.objects.get(pk=subscription.agent_id).status == S.DELETED
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.CANCELED


def test_a_checkout_just_paid_cannot_be_discarded(client, stripe_api, plan, alice):
    subscription = checkout(alice, plan)
    stripe_api.complete_checkout(subscription.stripe_checkout_session_id)  # webhook not here yet
    client.force_login(alice)

    response = client.post(reverse("billing:discard", args=[subscription.agent_id]), follow=True)

    assert "Stripe would not close this checkout" in response.content.decode()
    assert Agent.objects.get(pk=subscription.agent_id).status == S.PENDING_PAYMENT


def test_another_users_agent_answers_404_everywhere(client, stripe_api, plan, alice, bob):
    agent_id = checkout(alice, plan).agent_id
    client.force_login(bob)
    for name in ("billing:agent", "billing:agent-status", "billing:checkout-canceled"):
        assert client.get(reverse(name, args=[agent_id])).status_code == 404
    for name in ("billing:discard", "billing:dev-cancel", "billing:agent-limits"):
        assert client.post(reverse(name, args=[agent_id])).status_code == 404
    assert Agent.objects.get(pk=agent_id).status == S.PENDING_PAYMENT


def test_billing_pages_need_a_signed_in_user(client, stripe_api, plan, alice):
    agent_id = checkout(alice, plan).agent_id
    for url in (reverse("billing:new-agent"), reverse("billing:agent-status", args=[agent_id])):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")


def test_without_keys_outside_a_local_run_billing_is_off(client, settings, plan, alice):
    settings.STRIPE_SECRET_KEY = ""
    settings.BILLING_DEV_MODE = False
    client.force_login(alice)

    page = client.get(reverse("billing:new-agent"))
    response = choose(client, plan)

    assert "Billing is not set up on this server" in page.content.decode()
    assert "Billing is not set up on this server" in response.content.decode()
    assert not Agent.objects.exists()


def test_check_deploy_refuses_development_mode_billing(settings):
    settings.DEBUG = False
    settings.BILLING_DEV_MODE = True
    errors = [
        e.id for e in run_checks(include_deployment_checks=True) if e.id.startswith("billing")
    ]
    assert errors == ["billing.E001"]
    settings.BILLING_DEV_MODE = False
    errors = [
        e.id for e in run_checks(include_deployment_checks=True) if e.id.startswith("billing")
    ]
    assert errors == []
