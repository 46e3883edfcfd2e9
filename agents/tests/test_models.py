"""Agent validation, lifecycle transitions and the append-only audit trail."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from agents.models import (
    Agent,
    AgentEvent,
    AgentStatus,
    InvalidTransition,
    PaymentRequired,
    memory_limit_bytes,
)
from agents.services import create_agent
from agents.tests.factories import AgentFactory
from droplets.tests.factories import DropletFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("limits", "field", "message"),
    [
        ({"cpu_limit": Decimal("0")}, "cpu_limit", "greater than or equal to 0.01"),
        ({"cpu_limit": Decimal("-1")}, "cpu_limit", "greater than or equal to 0.01"),
        ({"memory_limit": "512"}, "memory_limit", "like 512m or 1g"),
        ({"memory_limit": "1t"}, "memory_limit", "like 512m or 1g"),
        ({"memory_limit": "abc"}, "memory_limit", "like 512m or 1g"),
        ({"memory_limit": "4m"}, "memory_limit", "at least 16m"),
        ({"monthly_cost_cap": Decimal("-5")}, "monthly_cost_cap", "greater than or equal to 0"),
        ({"daily_token_cap": -1}, "daily_token_cap", "greater than or equal to 0"),
        ({"pids_limit": 0}, "pids_limit", "greater than or equal to 8"),
        ({"max_tokens_per_request": 0}, "max_tokens_per_request", "greater than or equal to 1"),
    ],
)
def test_create_agent_rejects_nonsense_with_a_clear_message(alice, limits, field, message):
    with pytest.raises(ValidationError) as excinfo:
        create_agent(owner=alice, name="helper", **limits)
    assert message in " ".join(excinfo.value.message_dict[field])
    assert not Agent.objects.exists()


def test_cpu_above_the_droplets_size_is_rejected(alice):
    agent = AgentFactory(owner=alice, droplet=DropletFactory(vcpus=2), cpu_limit=Decimal("3"))
    with pytest.raises(ValidationError, match="only 2 vCPU"):
        agent.full_clean()


def test_database_refuses_non_positive_cpu_even_without_validation(alice):
    with pytest.raises(IntegrityError), transaction.atomic():
        AgentFactory(owner=alice, cpu_limit=Decimal("0"))


def test_names_are_unique_per_owner_but_not_across_owners(alice, bob):
    create_agent(owner=alice, name="helper")
    create_agent(owner=bob, name="helper")
    with pytest.raises(ValidationError, match="already have an agent with this name"):
        create_agent(owner=alice, name="helper")


def test_defaults_match_the_hardening_baseline(alice):
    agent = create_agent(owner=alice, name="helper", provider_key="sk-x")
    assert agent.cpu_limit == Decimal("0.5")
    assert agent.memory_limit_bytes == 512 * 1024**2
    assert agent.pids_limit == 100
    assert agent.read_only_root is True
    assert agent.drop_all_capabilities is True
    assert agent.status == AgentStatus.PENDING_PAYMENT
    assert list(agent.events.values_list("to_status", "reason")) == [("pending_payment", "created")]


@pytest.mark.parametrize(("text", "expected"), [("512m", 536870912), ("1g", 1073741824)])
def test_memory_limit_bytes(text, expected):
    assert memory_limit_bytes(text) == expected


def test_transition_records_who_when_from_to_and_why(agent, alice):
    assert agent.transition(AgentStatus.PROVISIONING, actor=alice, source="owner", reason="paid")
    event = agent.events.last()
    assert (event.from_status, event.to_status, event.actor, event.source, event.reason) == (
        "pending_payment",
        "provisioning",
        alice,
        "owner",
        "paid",
    )
    assert event.created_at is not None
    assert Agent.objects.get(pk=agent.pk).status == AgentStatus.PROVISIONING


def test_transition_to_the_current_state_is_a_no_op(agent):
    agent.transition(AgentStatus.PROVISIONING)
    before = agent.events.count()
    assert agent.transition(AgentStatus.PROVISIONING) is False
    assert agent.events.count() == before


def test_forbidden_transition_raises_and_changes_nothing(agent):
    with pytest.raises(
        InvalidTransition, match="agent is pending_payment; it cannot go to running"
    ):
        agent.transition(AgentStatus.RUNNING)
    assert Agent.objects.get(pk=agent.pk).status == AgentStatus.PENDING_PAYMENT
    assert agent.events.count() == 1  # only "created"


def test_deleted_is_final(agent):
    agent.transition(AgentStatus.DELETED)
    for target in AgentStatus.values:
        if target != AgentStatus.DELETED:
            with pytest.raises(InvalidTransition):
                agent.transition(target)


def test_transition_saves_extra_fields_in_the_same_update(agent):
    agent.transition(AgentStatus.PROVISIONING)
    agent.transition(AgentStatus.RUNNING, container_id="abc123")
    assert Agent.objects.get(pk=agent.pk).container_id == "abc123"


def test_transition_works_from_a_stale_instance(agent):
    stale = Agent.objects.get(pk=agent.pk)
    agent.transition(AgentStatus.PROVISIONING)
    stale.transition(AgentStatus.RUNNING)  # re-reads under the lock, so this is allowed
    assert stale.status == AgentStatus.RUNNING


def test_agent_events_are_append_only(agent):
    event = agent.events.get()
    event.reason = "rewritten"
    with pytest.raises(TypeError, match="append-only"):
        event.save()
    with pytest.raises(TypeError, match="append-only"):
        event.delete()
    with pytest.raises(TypeError, match="append-only"):
        AgentEvent.objects.filter(pk=event.pk).update(reason="rewritten")
    with pytest.raises(TypeError, match="append-only"):
        AgentEvent.objects.all().delete()
    assert AgentEvent.objects.get(pk=event.pk).reason == "created"


def test_a_killed_agent_cannot_be_merely_stopped(agent):
    agent.transition(AgentStatus.KILLED)
    with pytest.raises(InvalidTransition):
        agent.transition(AgentStatus.STOPPED)


def test_an_unpaid_agent_can_be_killed(agent):
    assert agent.transition(AgentStatus.KILLED)


# --- Only a paid agent runs (DESIGN.md trust boundary 5) -----------------------------------

S = AgentStatus


@pytest.mark.parametrize(
    ("start", "to"),
    [
        (S.PENDING_PAYMENT, S.PROVISIONING),
        (S.KILLED, S.PROVISIONING),
        (S.KILLED, S.RUNNING),
        (S.FAILED, S.PROVISIONING),
        (S.STOPPED, S.RUNNING),
        (S.STOPPED, S.PROVISIONING),
        (S.PAUSED, S.RUNNING),
        (S.PAUSED, S.PROVISIONING),
    ],
)
def test_an_agent_nothing_pays_for_cannot_go_where_it_would_run(alice, start, to):
    agent = create_agent(owner=alice, name="unpaid")
    Agent.objects.filter(pk=agent.pk).update(status=start)

    with pytest.raises(PaymentRequired) as excinfo:
        agent.transition(to, source="owner")

    assert isinstance(excinfo.value, InvalidTransition)  # callers that handle one handle both
    assert (excinfo.value.current, excinfo.value.requested) == (start, to)
    assert str(excinfo.value) == (
        f"agent is {start}; it cannot go to {to} because nothing pays for it: "
        "its subscription is not active"
    )
    assert Agent.objects.get(pk=agent.pk).status == start
    assert agent.events.count() == 1  # only "created"


def test_an_agent_nothing_pays_for_may_not_stay_provisioning_either(alice):
    agent = create_agent(owner=alice, name="unpaid")
    Agent.objects.filter(pk=agent.pk).update(status=S.PROVISIONING)  # its deploy was queued
    with pytest.raises(PaymentRequired):
        agent.transition(S.PROVISIONING)  # what the deploy does first


def test_the_rule_reads_billing_active_under_the_lock_not_from_the_instance(agent):
    stale = Agent.objects.get(pk=agent.pk)
    assert stale.billing_active
    Agent.objects.filter(pk=agent.pk).update(billing_active=False)  # billing: payment failed
    with pytest.raises(PaymentRequired):
        stale.transition(S.PROVISIONING)


@pytest.mark.parametrize("to", [S.KILLED, S.DELETED])
def test_an_agent_nothing_pays_for_can_still_be_killed_or_deleted(alice, to):
    agent = create_agent(owner=alice, name="unpaid")
    assert agent.transition(to)
    assert Agent.objects.get(pk=agent.pk).status == to


def test_a_running_agent_nothing_pays_for_can_be_stopped_and_paused(agent):
    agent.transition(S.PROVISIONING)
    agent.transition(S.RUNNING)
    Agent.objects.filter(pk=agent.pk).update(billing_active=False)
    assert agent.transition(S.PAUSED)
    assert agent.transition(S.STOPPED)
