"""A deploy that fails is retried with backoff, then ends `failed` with its reason,
its slot free, its owner emailed and an alert in admin, and operators can retry it."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from django.core import mail
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from agents.models import Agent, AgentStatus, OwnerNotification
from billing.services import deploy_retry_delay, requeue_stalled_deploys
from billing.tasks import deploy_paid_agent
from billing.tests.helpers import checkout, post_event
from droplets.containers import container_state
from droplets.models import Droplet, DropletStatus
from droplets.tests.factories import DropletFactory
from safer_claw.accounts.tests.factories import UserFactory
from safer_claw.accounts.tests.helpers import enable_totp, sign_in

S = AgentStatus
transactional = pytest.mark.django_db(transaction=True)


@pytest.fixture
def dead_droplet(db) -> Droplet:
    """A registered droplet whose engine does not answer."""
    return DropletFactory(
        name="dead-1", docker_url="unix:///run/saferclaw-test-no-such-engine/docker.sock"
    )


@pytest.fixture
def failed_agent(client, settings, stripe_api, plan, alice, dead_droplet, eager_retries) -> Agent:
    """Alice paid; her agent's deploy went to the dead droplet until it gave up."""
    settings.DEPLOY_MAX_RETRIES = 3
    subscription = checkout(alice, plan)
    post_event(client, stripe_api.complete_checkout(subscription.stripe_checkout_session_id))
    return Agent.objects.get(pk=subscription.agent_id)


@transactional
def test_a_deploy_onto_a_dead_droplet_ends_failed_with_its_reason_and_the_slot_free(
    client, settings, stripe_api, plan, alice, dead_droplet, eager_retries, caplog
):
    settings.DEPLOY_MAX_RETRIES = 3
    subscription = checkout(alice, plan)
    event = stripe_api.complete_checkout(subscription.stripe_checkout_session_id)

    with caplog.at_level("WARNING", logger="billing.tasks"):
        response = post_event(client, event)

    assert response.status_code == 200
    assert caplog.text.count("will retry") == 3  # then the last attempt gave up
    agent = Agent.objects.get(pk=subscription.agent_id)
    assert agent.status == S.FAILED
    assert agent.status_reason == (
        "deploy failed: no capacity: every droplet is full, unreachable or in maintenance"
    )
    assert (agent.droplet_id, agent.container_id) == (None, "")
    dead_droplet.refresh_from_db()
    assert dead_droplet.active_container_count == 0
    assert dead_droplet.status == DropletStatus.UNREACHABLE
    assert agent.tokens.filter(revoked_at__isnull=True).count() == 0
    (email,) = mail.outbox
    assert email.to == [alice.email]
    assert email.subject == "Your agent helper could not be started"
    assert agent.status_reason in email.body
    # The owner sees it on the agent's page.
    client.force_login(alice)
    state = client.get(reverse("billing:agent-status", args=[agent.pk])).json()
    assert (state["status"], state["reason"], state["settled"]) == (
        "failed",
        agent.status_reason,
        True,
    )


@transactional
def test_a_deploy_task_run_again_after_its_failure_tells_the_owner_once(failed_agent):
    # Its worker died after the failure, before acknowledging: the task runs again.
    assert len(mail.outbox) == 1
    deploy_paid_agent.delay(str(failed_agent.pk))
    assert len(mail.outbox) == 1
    (claim,) = OwnerNotification.objects.filter(agent=failed_agent)
    assert claim.key.startswith(f"deploy-failed:{failed_agent.pk}:")
    assert claim.sent_at is not None


@transactional
def test_a_failure_not_yet_told_when_its_worker_died_is_told_by_the_rerun(failed_agent):
    # As if the worker died between marking the agent failed and mailing.
    OwnerNotification.objects.all().delete()
    mail.outbox.clear()
    deploy_paid_agent.delay(str(failed_agent.pk))
    deploy_paid_agent.delay(str(failed_agent.pk))
    assert [m.subject for m in mail.outbox] == ["Your agent helper could not be started"]


def test_retries_back_off_exponentially_with_a_little_jitter(settings):
    settings.DEPLOY_RETRY_BACKOFF_SECONDS = 10
    delays = [deploy_retry_delay(n) for n in range(8)]
    for n, delay in enumerate(delays):
        base = min(10 * 2**n, 600)
        assert base <= delay <= base * 1.1


@transactional
def test_operators_see_failed_agents_in_admin(client, failed_agent):
    operator = UserFactory(is_staff=True, is_superuser=True)
    sign_in(client, operator, totp_secret=enable_totp(operator))  # operators need the code

    page = client.get(reverse("admin:billing_failedagent_changelist")).content.decode()

    assert "1 agent(s) failed and are not running; their owners were emailed." in page
    assert failed_agent.status_reason in page
    assert "Retry the deploy" in page


@pytest.mark.docker
@transactional
def test_an_operator_retries_a_failed_deploy_from_admin(
    client, failed_agent, local_droplet, engines
):
    operator = UserFactory(is_staff=True, is_superuser=True)
    sign_in(client, operator, totp_secret=enable_totp(operator))  # operators need the code

    client.post(
        reverse("admin:billing_failedagent_changelist"),
        {"action": "retry_deploys", "_selected_action": [str(failed_agent.pk)]},
    )

    failed_agent.refresh_from_db()
    assert failed_agent.status == S.RUNNING
    assert failed_agent.droplet_id == local_droplet.pk
    assert container_state(local_droplet, failed_agent.container_id).running
    assert [(e.source, e.actor, e.to_status) for e in failed_agent.events.all()][-2:] == [
        ("operator", operator, "provisioning"),
        ("billing", None, "running"),
    ]


@pytest.mark.docker
@transactional
def test_an_operator_retries_a_failed_deploy_with_manage_py(failed_agent, local_droplet):
    out = io.StringIO()
    call_command("deploy_agent", str(failed_agent.pk), stdout=out)

    failed_agent.refresh_from_db()
    assert failed_agent.status == S.RUNNING
    assert out.getvalue().strip() == f"droplet=d1-local container={failed_agent.container_id}"
    assert Droplet.objects.get(pk=local_droplet.pk).active_container_count == 1


@transactional
def test_an_agent_whose_payment_failed_is_not_deployed_again(client, stripe_api, failed_agent):
    subscription = failed_agent.subscription
    failed = stripe_api.invoice_event("invoice.payment_failed", subscription.stripe_subscription_id)
    assert post_event(client, failed).json()["message"] == "past due; agent left failed"
    operator = UserFactory(is_staff=True, is_superuser=True)
    sign_in(client, operator, totp_secret=enable_totp(operator))  # operators need the code

    response = client.post(
        reverse("admin:billing_failedagent_changelist"),
        {"action": "retry_deploys", "_selected_action": [str(failed_agent.pk)]},
        follow=True,
    )

    page = response.content.decode()
    assert "Helper not retried: its subscription is not active (payment failed)" in page
    failed_agent.refresh_from_db()
    assert failed_agent.status == S.FAILED


@pytest.mark.django_db
def test_a_paid_deploy_lost_on_the_way_is_queued_again(
    client, settings, stripe_api, plan, alice, eager_retries, django_capture_on_commit_callbacks
):
    # Inside the test's transaction the deploy queued on commit never runs: as if
    # the broker had lost it.
    subscription = checkout(alice, plan)
    post_event(client, stripe_api.complete_checkout(subscription.stripe_checkout_session_id))
    stalled = Agent.objects.filter(pk=subscription.agent_id)
    assert requeue_stalled_deploys() == 0  # retries may still be under way
    stalled.update(updated_at=timezone.now() - dt.timedelta(hours=1))
    settings.DEPLOY_MAX_RETRIES = 0  # no droplet: the requeued deploy fails at once

    with django_capture_on_commit_callbacks(execute=True):
        assert requeue_stalled_deploys() == 1

    assert stalled.get().status == S.FAILED  # the deploy ran, and said why it failed
    assert requeue_stalled_deploys() == 0
