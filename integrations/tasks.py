"""Celery finds an app's tasks here; the Google ones live with their provider."""

from integrations.google.tasks import (  # noqa: F401
    mail_reconnect_needed,
    refresh_google_tokens,
    retry_google_revocations,
    revoke_google_token,
)
