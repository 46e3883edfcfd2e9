"""The integrations app's models live with their provider (integrations/google/);
importing them here is what registers them with the app."""

from integrations.google.models import GoogleIntegration, PendingRevocation  # noqa: F401
