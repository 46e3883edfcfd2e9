"""create_agent (DESIGN.md's operator command): an agent runs only if a plan pays for it.

Without --plan it waits for payment and nothing can deploy it; with --plan the
owner pays at Stripe (in development mode the plan is active at once); with
--complimentary an operator grants the plan, on the record. The plan's number
of agents per owner applies either way.
"""

from __future__ import annotations

import io
import uuid

import pytest
from django.core.management import CommandError, call_command

from agents.models import Agent, AgentStatus
from billing.models import Subscription, SubscriptionStatus
from billing.tests.factories import PlanFactory

pytestmark = pytest.mark.django_db
S = AgentStatus


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("create_agent", *args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


def test_the_key_is_read_from_the_environment_and_the_id_printed(alice, monkeypatch):
    monkeypatch.setenv("AGENT_PROVIDER_KEY", "sk-ant-from-env-123")
    out, err = run("--owner", "ALICE@example.com", "--name", "helper", "--provider", "anthropic")
    agent = Agent.objects.get(pk=uuid.UUID(out))
    assert agent.owner == alice
    assert agent.ai_provider == "anthropic"
    assert agent.ai_api_key == "sk-ant-from-env-123"
    stored = Agent.objects.filter(pk=agent.pk).values_list("ai_api_key", flat=True)[0]
    assert "sk-ant-from-env-123" not in stored
    assert "sk-ant-from-env-123" not in out + err


def test_there_is_no_key_argument(alice):
    with pytest.raises(CommandError, match=r"unrecognized arguments"):
        run("--owner", alice.email, "--name", "x", "--key", "sk-secret")


def test_without_a_key_it_warns(alice, monkeypatch):
    monkeypatch.delenv("AGENT_PROVIDER_KEY", raising=False)
    out, err = run("--owner", alice.email, "--name", "helper")
    assert "AGENT_PROVIDER_KEY is not set" in err
    assert Agent.objects.get(pk=out).ai_api_key is None


def test_an_unknown_owner_fails_clearly():
    with pytest.raises(CommandError, match=r"no user with email nobody@example\.com"):
        run("--owner", "nobody@example.com", "--name", "x")
    assert not Agent.objects.exists()


def test_a_bad_name_fails_clearly(alice):
    with pytest.raises(CommandError, match="name: Use letters"):
        run("--owner", alice.email, "--name", "../etc")


def test_without_a_plan_the_agent_waits_for_payment_and_says_so(alice):
    out, err = run("--owner", alice.email, "--name", "helper")
    agent = Agent.objects.get(pk=out)
    assert (agent.status, agent.billing_active) == (S.PENDING_PAYMENT, False)
    assert not Subscription.objects.filter(agent=agent).exists()
    assert "No plan pays for this agent: it cannot be deployed or started." in err


def test_with_a_plan_in_development_mode_it_is_active_at_once(dev_mode, alice):
    PlanFactory(name="Basic", stripe_price_id="")
    out, err = run("--owner", alice.email, "--name", "helper", "--plan", "Basic")
    agent = Agent.objects.get(pk=out)
    assert (agent.status, agent.billing_active) == (S.PROVISIONING, True)
    subscription = Subscription.objects.get(agent=agent)
    assert (subscription.status, subscription.dev_mode) == (SubscriptionStatus.ACTIVE, True)
    assert "on the Basic plan (provisioning)" in err
    first = agent.events.first()
    assert (first.source, first.actor, first.reason) == ("operator", None, "created")


def test_with_a_plan_and_stripe_the_owner_is_sent_to_checkout(stripe_api, plan, alice):
    out, err = run(
        "--owner", alice.email, "--name", "helper", "--plan", "Basic",
        "--site-url", "https://saferclaw.example.com",
    )  # fmt: skip
    agent = Agent.objects.get(pk=out)
    subscription = Subscription.objects.get(agent=agent)
    assert (agent.status, subscription.status) == (S.PENDING_PAYMENT, SubscriptionStatus.PENDING)
    assert f"The owner pays at: {subscription.checkout_url}\n" in err
    (session,) = stripe_api.calls("/v1/checkout/sessions")
    assert session.params["success_url"].startswith(
        f"https://saferclaw.example.com/billing/agents/{agent.pk}/"
    )


def test_an_unknown_plan_is_refused_naming_the_plans(stripe_api, plan, alice):
    with pytest.raises(CommandError, match=r"no plan called 'Gold' \(plans: .*Basic"):
        run("--owner", alice.email, "--name", "helper", "--plan", "Gold")
    assert not Agent.objects.exists()


def test_the_plans_number_of_agents_applies(stripe_api, alice):
    PlanFactory(name="Basic", max_agents=1)
    run("--owner", alice.email, "--name", "one", "--plan", "Basic")
    with pytest.raises(CommandError, match=r"Basic plan allows 1 agent\(s\)"):
        run("--owner", alice.email, "--name", "two", "--plan", "Basic")
    with pytest.raises(CommandError, match=r"Basic plan allows 1 agent\(s\)"):
        run("--owner", alice.email, "--name", "two", "--plan", "Basic", "--complimentary", "x")
    assert not Agent.objects.filter(name="two").exists()


def test_a_complimentary_plan_is_granted_on_the_record(settings, plan, alice):
    settings.STRIPE_SECRET_KEY = ""
    settings.BILLING_DEV_MODE = False  # billing off: only an operator's grant makes an agent
    out, err = run(
        "--owner", alice.email, "--name", "helper", "--plan", "Basic",
        "--complimentary", "design partner, until March",
    )  # fmt: skip
    agent = Agent.objects.get(pk=out)
    assert (agent.status, agent.billing_active) == (S.PROVISIONING, True)
    subscription = Subscription.objects.get(agent=agent)
    assert (subscription.status, subscription.complimentary, subscription.dev_mode) == (
        SubscriptionStatus.ACTIVE,
        True,
        False,
    )
    reason = "complimentary plan granted by an operator: design partner, until March"
    assert list(agent.events.values_list("source", "to_status", "reason")) == [
        ("operator", "pending_payment", "created"),
        ("operator", "", f"billing active: subscription active ({reason})"),
        ("operator", "provisioning", reason),
    ]
    assert agent.cpu_limit == plan.cpu_limit  # the plan's limits
    assert "on the Basic plan (provisioning)" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--complimentary", "why"], "--complimentary grants a plan: name it with --plan"),
        (["--plan", "Basic", "--complimentary", "  "], "Say why the agent is complimentary"),
    ],
)
def test_a_complimentary_grant_needs_a_plan_and_a_reason(plan, alice, extra, message):
    with pytest.raises(CommandError, match=message):
        run("--owner", alice.email, "--name", "helper", *extra)
    assert not Agent.objects.exists()
