"""Agent tasks: thin wrappers that take ids and call services."""

from __future__ import annotations

from celery import shared_task

from agents.reconciliation import reconcile_all


@shared_task(ignore_result=True)
def reconcile_agents() -> None:
    reconcile_all()
