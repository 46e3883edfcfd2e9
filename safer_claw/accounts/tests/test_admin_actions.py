"""Admin actions are offered, and carried out, only for operators holding the
permission each declares: viewing a list is not enough to act on it."""

from __future__ import annotations

import pytest
from django.urls import reverse

from agents.models import AgentStatus
from agents.tokens import issue_agent_token
from billing.models import FailedAgent, Subscription, SubscriptionStatus
from billing.tests.factories import PlanFactory
from safer_claw.accounts.tests.helpers import operator_client

pytestmark = pytest.mark.django_db

ACTION_CHECKBOX = "_selected_action"


def offered_actions(client, url: str) -> set[str]:
    response = client.get(url)
    assert response.status_code == 200
    form = response.context["action_form"]  # None when no action is offered at all
    return {value for value, _ in form.fields["action"].choices if value} if form else set()


def post_action(client, url: str, action: str, *pks) -> None:
    response = client.post(url, {"action": action, ACTION_CHECKBOX: [str(pk) for pk in pks]})
    assert response.status_code in (200, 302)


def test_a_view_only_operator_can_neither_see_nor_run_the_kill(agent, alice):
    token = issue_agent_token(agent=agent)
    url = reverse("admin:accounts_user_changelist")
    viewer = operator_client("accounts.view_user")

    assert "kill_all_agents" not in offered_actions(viewer, url)
    assert "Kill all agents" not in viewer.get(url).content.decode()
    post_action(viewer, url, "kill_all_agents", alice.pk)
    agent.refresh_from_db()
    assert agent.status != AgentStatus.KILLED
    assert agent.tokens.get(hint=token[:10]).revoked_at is None


def test_change_rights_on_users_do_not_grant_the_kill(agent, alice):
    url = reverse("admin:accounts_user_changelist")
    editor = operator_client("accounts.view_user", "accounts.change_user", "agents.change_agent")
    assert "kill_all_agents" not in offered_actions(editor, url)
    post_action(editor, url, "kill_all_agents", alice.pk)
    agent.refresh_from_db()
    assert agent.status != AgentStatus.KILLED


def test_an_operator_with_the_kill_permission_kills(agent, alice):
    token = issue_agent_token(agent=agent)
    url = reverse("admin:accounts_user_changelist")
    killer = operator_client("accounts.view_user", "agents.kill_agent")

    assert "kill_all_agents" in offered_actions(killer, url)
    post_action(killer, url, "kill_all_agents", alice.pk)
    agent.refresh_from_db()
    assert agent.status == AgentStatus.KILLED
    assert agent.tokens.get(hint=token[:10]).revoked_at is not None


def test_applying_a_plan_needs_the_right_to_change_plans(agent, alice):
    plan = PlanFactory(daily_token_cap=100_000)
    Subscription.objects.create(
        agent=agent, owner=alice, plan=plan, status=SubscriptionStatus.ACTIVE
    )
    type(agent).objects.filter(pk=agent.pk).update(daily_token_cap=5_000)
    url = reverse("admin:billing_plan_changelist")

    viewer = operator_client("billing.view_plan")
    assert "apply_to_agents" not in offered_actions(viewer, url)
    post_action(viewer, url, "apply_to_agents", plan.pk)
    agent.refresh_from_db()
    assert agent.daily_token_cap == 5_000

    editor = operator_client("billing.view_plan", "billing.change_plan", email="ed@example.com")
    assert "apply_to_agents" in offered_actions(editor, url)
    post_action(editor, url, "apply_to_agents", plan.pk)
    agent.refresh_from_db()
    assert agent.daily_token_cap == 100_000


def test_retrying_deploys_needs_the_right_to_change_failed_agents(agent):
    type(agent).objects.filter(pk=agent.pk).update(status=AgentStatus.FAILED)
    url = reverse("admin:billing_failedagent_changelist")

    viewer = operator_client("billing.view_failedagent")
    assert "retry_deploys" not in offered_actions(viewer, url)
    post_action(viewer, url, "retry_deploys", agent.pk)
    assert FailedAgent.objects.get(pk=agent.pk).status == AgentStatus.FAILED

    retrier = operator_client(
        "billing.view_failedagent", "billing.change_failedagent", email="ret@example.com"
    )
    assert "retry_deploys" in offered_actions(retrier, url)
    post_action(retrier, url, "retry_deploys", agent.pk)
    assert FailedAgent.objects.get(pk=agent.pk).status == AgentStatus.PROVISIONING
