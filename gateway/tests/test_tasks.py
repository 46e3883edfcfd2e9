"""Agents paused at a cap run again once the cap has room (a new UTC day, a new period)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from agents.models import Agent, AgentStatus
from agents.services import create_agent, deploy_agent, stop_agent
from agents.tests.factories import paid
from droplets.containers import container_state
from gateway.metering import pause_for_cap
from gateway.tasks import resume_agents_below_caps

pytestmark = [pytest.mark.docker, pytest.mark.django_db]


def paused_at_daily_cap(owner, on_commit) -> Agent:
    agent = deploy_agent(agent=paid(create_agent(owner=owner, name="capped", provider_key="sk-x")))
    Agent.objects.filter(pk=agent.pk).update(
        tokens_today=1000, daily_token_cap=1000, tokens_day=timezone.now().date()
    )
    with on_commit(execute=True):  # the stop task is queued when the pause commits
        pause_for_cap(agent, "daily token cap of 1,000 tokens reached")
    agent.refresh_from_db()
    assert agent.status == AgentStatus.PAUSED
    assert not container_state(agent.droplet, agent.container_id).running
    return agent


def test_an_agent_paused_at_its_daily_cap_resumes_on_a_new_day(
    alice, local_droplet, django_capture_on_commit_callbacks
):
    agent = paused_at_daily_cap(alice, django_capture_on_commit_callbacks)
    resume_agents_below_caps.delay()
    assert Agent.objects.get(pk=agent.pk).status == AgentStatus.PAUSED  # same day: stays

    yesterday = timezone.now().date() - dt.timedelta(days=1)
    Agent.objects.filter(pk=agent.pk).update(tokens_day=yesterday)
    resume_agents_below_caps.delay()

    agent.refresh_from_db()
    assert agent.status == AgentStatus.RUNNING
    assert container_state(agent.droplet, agent.container_id).running
    assert agent.events.last().source == "gateway"


def test_an_agent_still_over_its_cost_cap_stays_paused(
    alice, local_droplet, django_capture_on_commit_callbacks
):
    agent = paused_at_daily_cap(alice, django_capture_on_commit_callbacks)
    Agent.objects.filter(pk=agent.pk).update(
        tokens_day=timezone.now().date() - dt.timedelta(days=1),
        cost_this_period=Decimal("10.00"),
        monthly_cost_cap=Decimal("10.00"),
    )
    resume_agents_below_caps.delay()
    assert Agent.objects.get(pk=agent.pk).status == AgentStatus.PAUSED


def test_an_agent_paused_by_its_owner_is_left_alone(alice, local_droplet):
    agent = deploy_agent(agent=paid(create_agent(owner=alice, name="resting", provider_key="sk-x")))
    stop_agent(agent=agent, actor=alice, source="owner", reason="holiday", to=AgentStatus.PAUSED)
    resume_agents_below_caps.delay()
    assert Agent.objects.get(pk=agent.pk).status == AgentStatus.PAUSED
