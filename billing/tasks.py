"""Billing's Celery tasks: thin, by agent id, retrying only what is transient."""

from __future__ import annotations

import logging

from celery import Task, shared_task
from django.conf import settings
from django.core.mail import mail_admins

from agents.models import Agent, AgentStatus, InvalidTransition
from agents.services import DeployFailed, delete_agent, deploy_agent, pause_agent, start_agent
from billing.models import Subscription
from billing.services import (
    deploy_retry_delay,
    report_deploy_failure,
    requeue_stalled_deploys,
    stop_billing,
    tell_deploy_failure,
)
from billing.stripe_client import StripeFailed
from droplets.docker_client import DropletError

logger = logging.getLogger(__name__)
S = AgentStatus
TEAR_DOWN_MAX_RETRIES = 8
LEASE_WAIT_SECONDS, LEASE_WAITS = 5, 60


@shared_task(bind=True, acks_late=True, ignore_result=True)
def deploy_paid_agent(self: Task, agent_id: str) -> None:
    """Deploy an agent that was paid for (or retried by an operator).

    A transient failure (no capacity, droplet unreachable) is retried with
    exponential backoff; the last attempt, or a permanent failure, leaves the
    agent `failed` with the reason, its slot free, its owner emailed.
    """
    agent = Agent.objects.filter(pk=agent_id).select_related("owner").first()
    if (
        agent is not None
        and agent.status == S.FAILED
        and agent.status_reason.startswith("deploy failed")
    ):
        # Run again after its worker died between failing and mailing: tell it
        # now (once: the mail is claimed per failure).
        tell_deploy_failure(agent)
        return
    if agent is None or agent.status != S.PROVISIONING:
        # Paused, cancelled or deployed since this was queued: nothing to do.
        return
    final = self.request.retries >= settings.DEPLOY_MAX_RETRIES
    try:
        agent = deploy_agent(agent=agent, source="billing", mark_failed=final)
    except InvalidTransition as exc:
        logger.info("deploy of agent %s stopped: %s", agent_id, exc)
        return
    except DeployFailed as exc:
        if not (final or exc.permanent):
            logger.warning("deploy of agent %s failed, will retry: %s", agent_id, exc)
            raise self.retry(
                exc=exc,
                countdown=deploy_retry_delay(self.request.retries),
                max_retries=settings.DEPLOY_MAX_RETRIES,
            ) from exc
        report_deploy_failure(agent=agent, reason=str(exc))
        return
    if agent.status == S.PROVISIONING:
        # Another deployer holds the agent's lease: it may be alive, or be a
        # killed one whose database session has not ended yet. Look again soon;
        # once the lease is free this task finishes what a dead one left.
        raise self.retry(countdown=LEASE_WAIT_SECONDS, max_retries=LEASE_WAITS)


@shared_task(ignore_result=True)
def requeue_stalled_paid_deploys() -> None:
    """Beat: paid agents whose deploy was lost on the way are deployed after all."""
    requeue_stalled_deploys()


@shared_task(ignore_result=True)
def stop_paused_agent(agent_id: str) -> None:
    """Stop the container of an agent paused for a failed payment."""
    agent = Agent.objects.filter(pk=agent_id, status=S.PAUSED).first()
    if agent is None:
        return
    try:
        pause_agent(agent=agent, reason=agent.status_reason, source="stripe")
    except DropletError as exc:
        # The agent is paused already; reconciliation stops the container
        # once its droplet answers.
        logger.warning("paused agent %s: container not stopped yet: %s", agent_id, exc)


@shared_task(ignore_result=True)
def resume_paid_agent(agent_id: str) -> None:
    """Run again an agent that was paused for a payment that has now been made."""
    agent = Agent.objects.filter(pk=agent_id, status=S.PAUSED).first()
    if agent is None:
        return
    try:
        start_agent(agent=agent, source="stripe")
    except (DeployFailed, DropletError, InvalidTransition) as exc:
        logger.warning("agent %s not resumed: %s", agent_id, exc)


def retry_or_alert(task: Task, exc: Exception, *, subject: str, message: str) -> None:
    """Retry a clean-up that failed for a passing reason; otherwise tell the admins.

    ``exc`` has a ``permanent`` flag (DropletError, StripeFailed).
    """
    if exc.permanent or task.request.retries >= TEAR_DOWN_MAX_RETRIES:
        logger.error("%s: %s", subject, exc)
        mail_admins(subject=subject, message=message)
        return
    raise task.retry(
        exc=exc,
        countdown=deploy_retry_delay(task.request.retries),
        max_retries=TEAR_DOWN_MAX_RETRIES,
    ) from exc


@shared_task(bind=True, acks_late=True, ignore_result=True)
def tear_down_agent(self: Task, agent_id: str) -> None:
    """Remove the container of an agent whose subscription ended, free its slot,
    and mark it `deleted`; retried while its droplet does not answer."""
    agent = Agent.objects.filter(pk=agent_id).exclude(status=S.DELETED).first()
    if agent is None:
        return
    try:
        delete_agent(agent=agent, source="stripe")
    except DropletError as exc:
        retry_or_alert(
            self,
            exc,
            subject=f"Tear-down failed: agent {agent_id}",
            message=f"Its subscription ended, but its container stays: {exc}",
        )


@shared_task(bind=True, acks_late=True, ignore_result=True)
def stop_billing_for(self: Task, subscription_id: str) -> None:
    """Cancel at Stripe the subscription of an agent that was deleted."""
    subscription = Subscription.objects.filter(pk=subscription_id).first()
    if subscription is None:
        return
    try:
        stop_billing(subscription)
    except StripeFailed as exc:
        retry_or_alert(
            self,
            exc,
            subject=f"Cancel failed: subscription {subscription_id}",
            message=f"Its agent was deleted, but Stripe still bills it: {exc}",
        )
