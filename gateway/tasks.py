"""Gateway tasks: stopping an agent paused at a cap, and the sweeper."""

from __future__ import annotations

import datetime as dt
import logging

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from agents.models import Agent, AgentStatus, InvalidTransition
from agents.notifications import last_event_key, notify_owner_once
from agents.services import DeployFailed, start_agent, stop_agent
from droplets.docker_client import DropletError
from gateway.metering import charge_unsettled_calls

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
    # Both steps are safe to run again (a worker lost mid-task, a retry): the
    # stop changes nothing twice, and the mail is claimed once per pause.
    stop_agent(agent=agent, source="gateway", reason=agent.status_reason, to=AgentStatus.PAUSED)
    notify_owner_once(
        agent=agent,
        key=last_event_key(agent, "paused-at-cap", AgentStatus.PAUSED),
        subject=f"Safer-Claw: your agent {agent.name} is paused",
        message=(
            f"Your agent {agent.name} reached its {agent.status_reason.split(' reached')[0]}"
            " and has been paused so it cannot spend more.\n\n"
            "You can raise the cap or start it again from your dashboard."
        ),
    )


@shared_task(ignore_result=True)
def sweep() -> None:
    """Charge calls that never settled (their process died) their full reservation."""
    older = dt.timedelta(minutes=settings.GATEWAY_RESERVATION_TIMEOUT_MINUTES)
    charged = charge_unsettled_calls(older_than=older)
    if charged:
        logger.warning("charged %d unsettled gateway call(s) their full reservation", charged)


@shared_task(ignore_result=True)
def resume_agents_below_caps() -> None:
    """Start again agents the gateway paused at a cap that now has room.

    The daily token count starts afresh at UTC midnight and the cost counter
    with each billing period; an agent paused at its cap resumes then, without
    its owner having to come back. Agents paused for anything else (an owner,
    a failed payment) are left alone.
    """
    for agent in agents_paused_at_a_cap_with_room():
        try:
            start_agent(agent=agent, source="gateway")
        except (DropletError, DeployFailed, InvalidTransition) as exc:
            logger.warning("could not resume agent %s below its caps: %s", agent.pk, exc)


def agents_paused_at_a_cap_with_room() -> list[Agent]:
    today = timezone.now().date()
    resumable = []
    for agent in Agent.objects.filter(status=AgentStatus.PAUSED).select_related("droplet"):
        last = agent.events.filter(to_status=AgentStatus.PAUSED).order_by("-created_at").first()
        if last is None or last.source != "gateway":
            continue
        tokens_left = agent.tokens_day != today or agent.tokens_today < agent.daily_token_cap
        money_left = agent.cost_this_period < agent.monthly_cost_cap
        if tokens_left and money_left:
            resumable.append(agent)
    return resumable
