"""Gateway tasks: stopping an agent paused at a cap, and the sweeper."""

from __future__ import annotations

import datetime as dt
import logging

from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.utils import timezone

from agents.models import Agent, AgentStatus
from agents.services import stop_agent
from droplets.docker_client import DropletError
from gateway.metering import release_stale_reservations
from gateway.models import AgentRun, RateWindow

logger = logging.getLogger(__name__)


@shared_task(
    bind=True,
    autoretry_for=(DropletError,),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=10,
)
def stop_agent_at_cap(self, agent_id: str) -> None:
    """Stop the container of an agent the gateway paused; tell its owner once."""
    agent = Agent.objects.select_related("owner").get(pk=agent_id)
    if agent.status != AgentStatus.PAUSED:
        return  # started again (or killed) meanwhile
    stop_agent(agent=agent, source="gateway", reason=agent.status_reason, to=AgentStatus.PAUSED)
    if self.request.retries == 0:
        send_mail(
            subject=f"Safer-Claw: your agent {agent.name} is paused",
            message=(
                f"Your agent {agent.name} reached its {agent.status_reason.split(' reached')[0]}"
                " and has been paused so it cannot spend more.\n\n"
                "You can raise the cap or start it again from your dashboard."
            ),
            from_email=None,
            recipient_list=[agent.owner.email],
        )


@shared_task(ignore_result=True)
def sweep() -> None:
    """Release reservations of calls that never settled; prune old counters."""
    older = dt.timedelta(minutes=settings.GATEWAY_RESERVATION_TIMEOUT_MINUTES)
    released = release_stale_reservations(older_than=older)
    if released:
        logger.warning("released %d stale gateway reservation(s)", released)
    minute_now = int(timezone.now().timestamp() // 60)
    RateWindow.objects.filter(minute__lt=minute_now - 10).delete()
    AgentRun.objects.filter(deadline__lt=timezone.now() - dt.timedelta(days=2)).delete()
