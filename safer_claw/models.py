"""The project's own models: what every app may use, and no app owns."""

from __future__ import annotations

from django.db import models


class OutboxTask(models.Model):
    """A Celery task an app decided on, written in the same transaction as the
    decision (a transactional outbox: ``safer_claw.outbox``).

    It is sent once the transaction commits and deleted once the broker took
    it; if the broker was down, it stays here and beat's ``send_outbox`` sends
    it when the broker is back. A task may so be sent twice (sent, then the
    process died before the delete): every task sent this way is idempotent,
    keyed on the state it acts on, so its effect happens once.
    """

    task = models.CharField(max_length=200)
    args = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    attempts = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.task}{tuple(self.args)}"
