"""Google's Celery tasks: thin, by id, retrying only what is transient."""

from __future__ import annotations

import logging

from celery import Task, shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.utils import timezone

from agents.models import Agent
from integrations.google import services
from integrations.google.client import GoogleFailed
from integrations.google.models import PendingRevocation

logger = logging.getLogger(__name__)
BEAT_SECONDS = 300  # refresh_google_tokens's period (settings.CELERY_BEAT_SCHEDULE)
REVOKE_MAX_RETRIES = 6  # then beat's sweep (every 15 minutes) keeps trying
REVOKE_SWEEP_AFTER_SECONDS = 900


@shared_task(ignore_result=True)
def refresh_google_tokens() -> None:
    """Beat: refresh tokens that would expire before the next round, so a tool call
    rarely waits for a refresh, and a revoked grant is noticed (and its owner told)
    without waiting for the agent to use it; let go of deleted agents' grants."""
    counts = services.refresh_expiring(within=settings.GOOGLE_REFRESH_MARGIN_SECONDS + BEAT_SECONDS)
    released = services.disconnect_deleted_agents()
    if any(counts.values()) or released:
        logger.info("Google tokens: %s; deleted agents let go: %d", counts, released)


@shared_task(bind=True, acks_late=True, ignore_result=True)
def revoke_google_token(self: Task, pending_id: str) -> None:
    """Revoke at Google a token whose revoke failed at disconnect."""
    pending = PendingRevocation.objects.filter(pk=pending_id).select_related("agent").first()
    if pending is None:
        return
    try:
        services.retry_revocation(pending=pending)
    except GoogleFailed as exc:
        if self.request.retries >= REVOKE_MAX_RETRIES:
            logger.warning("revoke for agent %s still failing: %s", pending.agent_id, exc)
            return
        raise self.retry(exc=exc, countdown=30 * 2**self.request.retries) from exc


@shared_task(ignore_result=True)
def retry_google_revocations() -> None:
    """Beat: revocations whose task was lost or ran out of retries are tried again."""
    stale = timezone.now() - timezone.timedelta(seconds=REVOKE_SWEEP_AFTER_SECONDS)
    for pending_id in PendingRevocation.objects.filter(last_attempt_at__lt=stale).values_list(
        "pk", flat=True
    ):
        revoke_google_token.delay(str(pending_id))


@shared_task(ignore_result=True)
def mail_reconnect_needed(agent_id: str) -> None:
    """Tell the owner their agent's Google connection broke and how to mend it."""
    agent = Agent.objects.filter(pk=agent_id).select_related("owner").first()
    if agent is None:
        return
    send_mail(
        subject=f"Reconnect Google for your agent {agent.name}",
        message=(
            f"Google no longer accepts the connection of your agent {agent.name} "
            "(access was revoked, your password changed, or the grant expired).\n\n"
            "Until you reconnect, the agent cannot use Calendar, Gmail or Drive. Open "
            f"your dashboard, then {agent.name} > Integrations, and connect again.\n"
        ),
        from_email=None,
        recipient_list=[agent.owner.email],
    )
