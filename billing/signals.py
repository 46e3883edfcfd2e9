"""Billing follows what agents announces: a deleted agent stops being billed, and an
agent reconciliation sets provisioning again is deployed (agents knows nothing of
billing, so this is where billing hears of both)."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver

from agents.models import Agent, AgentStatus
from agents.signals import redeploy_wanted
from billing.models import HOLDS_PLACE, Subscription
from billing.services import enqueue_deploy
from safer_claw.outbox import after_commit


@receiver(post_save, sender=Agent, dispatch_uid="billing.stop_billing_deleted_agents")
def stop_billing_deleted_agent(
    sender: type[Agent], instance: Agent, update_fields: Any = None, **kwargs: Any
) -> None:
    # Agents knows nothing of billing, so an agent deleted through the API or by
    # an operator would go on being charged for; this is where billing hears of it.
    if instance.status != AgentStatus.DELETED:
        return
    if update_fields is not None and "status" not in update_fields:
        return
    live = Subscription.objects.filter(agent_id=instance.pk, status__in=HOLDS_PLACE).first()
    if live is not None:
        from billing.tasks import stop_billing_for

        after_commit(stop_billing_for, str(live.pk))


@receiver(redeploy_wanted, dispatch_uid="billing.deploy_agents_reconciliation_redeploys")
def deploy_again(sender: type[Agent], agent: Agent, **kwargs: Any) -> None:
    # Reconciliation (agents) found a paid agent without a container and set it
    # provisioning; the deploy goes in the outbox in that same transaction.
    enqueue_deploy(agent)
