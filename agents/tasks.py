"""Agent tasks: thin wrappers that take ids and call services."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from agents import cap_alerts, conversation_services, notifications, schedule_services
from agents.kill_switch import finish_kill
from agents.models import Agent
from agents.reconciliation import reconcile_all
from droplets.docker_client import DropletError


@shared_task(ignore_result=True)
def reconcile_agents() -> None:
    reconcile_all()


@shared_task(ignore_result=True, autoretry_for=(OSError,), retry_backoff=30, max_retries=10)
def tell_owner_agent_failed(agent_id: str) -> None:
    """Safe to run again: the mail is claimed once per failure."""
    agent = Agent.objects.select_related("owner").filter(pk=agent_id).first()
    if agent is not None:
        notifications.tell_agent_failed(agent)


@shared_task(bind=True, ignore_result=True, max_retries=30)
def retry_stop_container(self, agent_id: str, remove: bool = False) -> None:
    """Stop (or remove) a killed agent's container that the kill could not reach."""
    try:
        finish_kill(agent_id=agent_id, remove=remove)
    except DropletError as exc:
        if exc.permanent:
            raise
        # 5 s, 10 s, 20 s … capped at 5 minutes: about two hours in all.
        raise self.retry(exc=exc, countdown=min(300, 5 * 2**self.request.retries)) from exc


@shared_task(ignore_result=True)
def expire_overdue_runs() -> None:
    """Stop runs past their deadline (also done lazily on the runtime's next call)."""
    conversation_services.expire_overdue_runs()


@shared_task(ignore_result=True)
def fire_due_schedules() -> None:
    """Post each due schedule's message; safe to run twice or late (see schedule_services)."""
    schedule_services.fire_due_schedules()


@shared_task(ignore_result=True)
def send_cap_alerts() -> None:
    cap_alerts.send_cap_alerts(site_url=settings.CONTROL_PLANE_URL)
