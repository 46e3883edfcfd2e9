"""Mails to an agent's owner that are sent at most once per notification key.

Tasks run again when their worker dies before acknowledging them (acks late).
The claim (an ``OwnerNotification`` row, unique by key) is committed before the
mail goes, so a rerun finds it and sends nothing; a mail that fails to send
gives its claim back, so a retry may send it.
"""

from __future__ import annotations

import logging

from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.models import Agent, AgentStatus, OwnerNotification

logger = logging.getLogger(__name__)


def notify_owner_once(*, agent: Agent, key: str, subject: str, message: str) -> bool:
    """Mail the owner unless ``key`` was claimed before; returns whether it sent.

    Raises what the mail backend raises (its claim given back first)."""
    try:
        with transaction.atomic():
            claim = OwnerNotification.objects.create(agent=agent, key=key, subject=subject[:200])
    except IntegrityError:
        logger.info("notification %s was sent already", key)
        return False
    try:
        send_mail(
            subject=subject, message=message, from_email=None, recipient_list=[agent.owner.email]
        )
    except Exception:
        claim.delete()
        raise
    OwnerNotification.objects.filter(pk=claim.pk).update(sent_at=timezone.now())
    return True


def last_event_key(agent: Agent, kind: str, to_status: str) -> str:
    """A key naming the agent's latest move to ``to_status``: one mail per such move."""
    event = agent.events.filter(to_status=to_status).order_by("-created_at", "-id").first()
    return f"{kind}:{agent.pk}:{event.pk if event else 'none'}"


def tell_agent_failed(agent: Agent) -> bool:
    """Mail the owner once per failure that their agent stopped for good, and why
    (killed for its memory, restarts used up, its container lost too often)."""
    if agent.status != AgentStatus.FAILED:
        return False  # redeployed, deleted or started again meanwhile: nothing to say
    return notify_owner_once(
        agent=agent,
        key=last_event_key(agent, "failed", AgentStatus.FAILED),
        subject=f"Safer-Claw: your agent {agent.name} has stopped",
        message=(
            f"Your agent {agent.name} stopped and will not start again on its own: "
            f"{agent.status_reason}.\n\n"
            "Its conversation and settings are kept; its page shows what happened."
        ),
    )
