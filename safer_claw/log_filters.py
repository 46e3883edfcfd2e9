"""Logging filters, loaded with the logging configuration (before the apps)."""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError

# What the database driver raises while PostgreSQL restarts or cannot be reached
# (a pool timeout is an OperationalError too).
DATABASE_DOWN = (OperationalError, InterfaceError)


class DatabaseDownInOneLine(logging.Filter):
    """Django logs every 5xx answer at ERROR with the exception's traceback. While the
    database is away every request fails the same known way and is answered 503
    (safer_claw.views.database_unavailable): one warning line each says so, as the
    gateway's does, instead of a traceback per request burying anything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, DATABASE_DOWN):
            request = getattr(record, "request", None)
            record.msg = "database unavailable (%s): answered %s to %s %s"
            record.args = (
                type(exc).__name__,
                getattr(record, "status_code", "?"),  # 503; DEBUG's error page is a 500
                getattr(request, "method", "?"),
                getattr(request, "path", "?"),
            )
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True
