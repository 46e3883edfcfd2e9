"""Celery tasks queued with the transaction that decided them (a transactional outbox).

Below every app, so any of them (billing paying for a deploy, agents failing one)
can queue a task exactly when its change commits, and none has to import another
for it.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from safer_claw.models import OutboxTask

logger = logging.getLogger(__name__)
# An outbox row younger than this is still its own commit hook's to send.
OUTBOX_GRACE = dt.timedelta(seconds=20)


def after_commit(task: Any, *args: str) -> None:
    """Queue a Celery task once the current transaction commits, without losing it.

    The task is written to the outbox in the caller's transaction, so it exists
    exactly when the change that asked for it does. After the commit it is sent
    and its row deleted; if the broker cannot take it, that is logged and the
    row stays for :func:`flush_outbox` (beat) to send once the broker is back.
    """
    row = OutboxTask.objects.create(task=task.name, args=list(args))

    def enqueue() -> None:
        try:
            task.delay(*args)
        except Exception as exc:  # any broker failure: the outbox keeps it
            logger.warning(
                "broker did not take %s%s (%s): left in the outbox", task.name, args, exc
            )
            return
        OutboxTask.objects.filter(pk=row.pk).delete()

    enqueue.__qualname__ = f"enqueue {task.name}{args}"  # what Django logs on failure
    transaction.on_commit(enqueue, robust=True)


def flush_outbox(*, older_than: dt.timedelta = OUTBOX_GRACE) -> int:
    """Send the outbox's tasks that were not sent after their commit (the broker
    was down, or the process died first). Returns how many it sent.

    Rows younger than ``older_than`` are left to their own commit hook; each row
    is locked (others skipped) so two flushes never send the same one.
    """
    from safer_claw.celery import app

    sent = 0
    cutoff = timezone.now() - older_than
    while True:
        with transaction.atomic():
            row = (
                OutboxTask.objects.select_for_update(skip_locked=True)
                .filter(created_at__lt=cutoff)
                .first()
            )
            if row is None:
                return sent
            # By name (eager in tests); raises while the broker is still down.
            app.tasks[row.task].apply_async(args=row.args)
            row.delete()
        sent += 1
