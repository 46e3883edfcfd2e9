"""POST /api/agents/: creating an agent is a checkout, under the plan's limits."""

from __future__ import annotations

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from knox.models import AuthToken
from rest_framework.test import APIClient

from agents.models import Agent, AgentStatus
from billing.models import Subscription, SubscriptionStatus
from billing.tests.factories import PlanFactory

pytestmark = pytest.mark.django_db
S = AgentStatus


def api_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {AuthToken.objects.create(user)[1]}")
    return client


def create(client, **body):
    return client.post("/api/agents/", {"plan": "Basic", "name": "scribe", **body}, format="json")


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def test_create_opens_a_checkout_and_returns_the_kill_secret_once(stripe_api, plan, alice):
    client = api_client(alice)
    response = create(
        client, ai_provider="anthropic", provider_key="sk-ant-secret-123456", daily_token_cap=5000
    )

    assert response.status_code == 201, response.json()
    created = response.json()
    agent = Agent.objects.get(pk=created["id"])
    assert created["kill_secret"] == agent.kill_secret
    assert len(created["kill_secret"]) >= 40
    assert (created["status"], created["ai_provider"], created["daily_token_cap"]) == (
        "pending_payment",
        "anthropic",
        5000,
    )
    assert created["monthly_cost_cap"] == f"{plan.monthly_cost_cap:.2f}"  # the plan's
    assert created["provider_key_set"] is True
    assert agent.ai_api_key == "sk-ant-secret-123456"
    subscription = Subscription.objects.get(agent=agent)
    assert (subscription.owner, subscription.plan, subscription.status) == (
        alice,
        plan,
        SubscriptionStatus.PENDING,
    )
    assert created["checkout_url"] == subscription.checkout_url
    assert created["checkout_url"].startswith(f"{stripe_api.url}/c/pay/cs_test_")
    (session,) = stripe_api.calls("/v1/checkout/sessions")
    assert session.params["client_reference_id"] == str(agent.pk)
    assert agent.billing_active is False  # nothing is paid yet
    shown = client.get(f"/api/agents/{agent.id}/")
    assert "kill_secret" not in shown.json()
    assert "sk-ant-secret" not in shown.content.decode()
    assert "sk-ant-secret" not in response.content.decode()


def test_in_development_mode_the_plan_is_active_at_once(dev_mode, alice):
    PlanFactory(name="Basic", stripe_price_id="")

    response = create(api_client(alice))

    assert response.status_code == 201, response.json()
    created = response.json()
    assert (created["status"], created["checkout_url"]) == ("provisioning", None)
    agent = Agent.objects.get(pk=created["id"])
    assert agent.billing_active is True
    assert Subscription.objects.get(agent=agent).dev_mode is True


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "no/slashes"}, "name"),
        ({"name": ""}, "name"),
        ({"ai_provider": "cohere"}, "ai_provider"),
        ({"daily_token_cap": -1}, "daily_token_cap"),
        ({"daily_token_cap": 100_001}, "daily_token_cap"),  # the plan allows 100,000
        ({"plan": "Platinum"}, "plan"),
        ({"plan": ""}, "plan"),
    ],
)
def test_create_refuses_bad_input_with_400(stripe_api, plan, alice, payload, field):
    response = create(api_client(alice), **payload)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid"
    assert field in error["fields"]
    assert not Agent.objects.exists()
    assert not stripe_api.calls("/v1/checkout/sessions")


def test_create_needs_a_plan(stripe_api, plan, alice):
    response = api_client(alice).post("/api/agents/", {"name": "scribe"}, format="json")
    assert response.status_code == 400
    assert error_of(response)["fields"] == {"plan": ["This field is required."]}


def test_a_plan_not_offered_is_named_with_the_ones_that_are(stripe_api, plan, alice):
    PlanFactory(name="Legacy", stripe_price_id="price_pro", is_active=False)
    response = create(api_client(alice), plan="Legacy")
    assert response.status_code == 400
    assert "offered: Basic" in error_of(response)["message"]


def test_create_refuses_a_name_the_user_already_has(stripe_api, plan, alice):
    client = api_client(alice)
    assert create(client, name="helper").status_code == 201
    response = create(client, name="helper")
    assert response.status_code == 400
    assert "already have an agent with this name" in error_of(response)["message"]


def test_the_plan_limits_how_many_agents_a_user_holds(
    stripe_api, alice, bob, django_capture_on_commit_callbacks
):
    PlanFactory(name="Basic", max_agents=2)
    client = api_client(alice)
    assert create(client, name="one").status_code == 201
    assert create(client, name="two").status_code == 201

    response = create(client, name="three")

    assert response.status_code == 402
    assert error_of(response) == {
        "code": "agent_limit_reached",
        "message": "Your Basic plan allows 2 agent(s), and you have them all. "
        "Delete one, or choose another plan.",
    }
    assert not Agent.objects.filter(name="three").exists()
    assert len(stripe_api.calls("/v1/checkout/sessions")) == 2
    assert create(api_client(bob), name="three").status_code == 201  # per owner
    # An unpaid agent can be deleted, and its place is free again.
    one = Agent.objects.get(owner=alice, name="one")
    with django_capture_on_commit_callbacks(execute=True):
        assert client.delete(f"/api/agents/{one.pk}/").status_code == 204
    assert Subscription.objects.get(agent=one).status == SubscriptionStatus.CANCELED
    assert create(client, name="three").status_code == 201


def test_without_billing_no_agent_can_be_created(settings, plan, alice):
    settings.STRIPE_SECRET_KEY = ""
    settings.BILLING_DEV_MODE = False

    response = create(api_client(alice))

    assert response.status_code == 503
    assert error_of(response)["code"] == "billing_unavailable"
    assert not Agent.objects.exists()


def test_a_checkout_stripe_refuses_is_503_and_leaves_no_live_agent(stripe_api, alice):
    PlanFactory(name="Basic", stripe_price_id="price_nobody_made")

    response = create(api_client(alice))

    assert response.status_code == 503
    assert "nothing was charged" in error_of(response)["message"]
    assert Agent.objects.get(owner=alice).status == S.DELETED


def test_the_list_is_still_the_users_own_agents(stripe_api, plan, alice, bob):
    create(api_client(bob), name="bobs")
    response = api_client(alice).get("/api/agents/")
    assert response.status_code == 200
    assert response.json() == []
    assert APIClient().get("/api/agents/").status_code == 401


# Transactional: each WSGI request ends with Django closing its database connection.
@pytest.mark.django_db(transaction=True)
def test_a_created_agent_is_what_the_schema_documents(stripe_api, alice):
    PlanFactory(name="Basic")
    schema = schemathesis.openapi.from_wsgi("/api/schema/", WSGIHandler())
    case = schema["/api/agents/"]["POST"].Case(
        body={"plan": "Basic", "name": "scribe", "provider_key": "sk-test"},
        media_type="application/json",
    )

    response = case.call_and_validate(  # raises if the answer is not as documented
        headers={"Authorization": f"Token {AuthToken.objects.create(alice)[1]}"}
    )

    assert response.status_code == 201
    assert response.json()["checkout_url"].startswith(stripe_api.url)
