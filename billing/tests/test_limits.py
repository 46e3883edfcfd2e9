"""An agent's limits come from its plan; its owner may lower them, never raise them."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from agents.models import Agent
from billing.services import apply_plan_to_agents, change_agent_limits
from billing.tests.helpers import checkout

pytestmark = pytest.mark.django_db


@pytest.fixture
def agent(stripe_api, plan, alice) -> Agent:
    return checkout(alice, plan).agent


def test_an_owner_lowers_a_cap_from_the_agent_page(client, alice, agent):
    client.force_login(alice)
    response = client.post(
        reverse("billing:agent-limits", args=[agent.pk]),
        {"daily_token_cap": 50_000, "monthly_cost_cap": "2.50"},
        follow=True,
    )
    assert "Limits saved." in response.content.decode()
    agent.refresh_from_db()
    assert (agent.daily_token_cap, agent.monthly_cost_cap) == (50_000, Decimal("2.50"))
    event = agent.events.last()
    assert (event.actor, event.source) == (alice, "owner")
    assert event.reason == "owner changed limits: daily_token_cap=50000, monthly_cost_cap=2.50"


def test_an_owner_cannot_raise_a_cap_past_the_plan(client, alice, agent):
    client.force_login(alice)
    events = agent.events.count()
    response = client.post(
        reverse("billing:agent-limits", args=[agent.pk]),
        {"daily_token_cap": 100_001, "monthly_cost_cap": "5.00"},
        follow=True,
    )
    assert "Your Basic plan allows at most 100000." in response.content.decode()
    agent.refresh_from_db()
    assert agent.daily_token_cap == 100_000
    assert agent.events.count() == events


def test_no_limit_can_go_past_the_plan(alice, agent):
    with pytest.raises(ValidationError) as excinfo:
        change_agent_limits(
            agent=agent,
            actor=alice,
            limits={
                "cpu_limit": Decimal("0.75"),
                "memory_limit": "1g",
                "pids_limit": 65,
                "allowed_tools": ["calendar.list_events", "gmail.search"],
                "max_tokens_per_request": 2048,  # equal to the plan's: fine
            },
        )
    assert set(excinfo.value.message_dict) == {
        "cpu_limit",
        "memory_limit",
        "pids_limit",
        "allowed_tools",
    }
    agent.refresh_from_db()
    assert (agent.cpu_limit, agent.memory_limit) == (Decimal("0.50"), "256m")


def test_an_edited_plan_is_applied_to_its_live_agents(alice, plan, agent):
    plan.daily_token_cap = 150_000
    plan.memory_limit = "512m"
    plan.save()

    assert apply_plan_to_agents(plan=plan, actor=None) == 1

    agent.refresh_from_db()
    assert (agent.daily_token_cap, agent.memory_limit) == (150_000, "512m")
    assert agent.events.last().reason.startswith("Basic plan changed: ")
