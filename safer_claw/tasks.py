"""The project's own Celery tasks (beat's): thin, calling safer_claw's services."""

from __future__ import annotations

from celery import shared_task

from safer_claw.outbox import flush_outbox


@shared_task(ignore_result=True)
def send_outbox() -> None:
    """Beat: send the tasks the broker could not take when they were decided."""
    flush_outbox()
