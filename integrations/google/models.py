"""An agent's Google connection, and revocations still owed to Google."""

from __future__ import annotations

import time
import uuid

from django.db import models

from agents.models import Agent
from integrations.google.capabilities import BY_SCOPE, Capability
from safer_claw.fields import EncryptedJSONField, EncryptedTextField


class IntegrationStatus(models.TextChoices):
    CONNECTED = "connected", "Connected"
    # Google refused the refresh token (invalid_grant): the tools are off
    # until the owner connects again.
    BROKEN = "broken", "Broken: reconnect"


class GoogleIntegration(models.Model):
    """One agent's grant on one Google account, and its tokens.

    The tokens never leave the control plane (DESIGN.md trust boundary 1):
    ``token`` holds the access token, refresh token, granted scopes and expiry,
    sealed with AES-256-GCM and bound to this row. Disconnecting deletes the row.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.OneToOneField(Agent, on_delete=models.CASCADE, related_name="google_integration")
    status = models.CharField(
        max_length=16, choices=IntegrationStatus.choices, default=IntegrationStatus.CONNECTED
    )
    # {"access_token", "refresh_token", "token_type", "expires_at", "scope"}
    token = EncryptedJSONField(editable=False)
    # Scopes the owner was asked for and did not grant (Google's granular
    # consent, or a cancelled consent screen); shown on the page.
    not_granted_scopes = models.JSONField(default=list, blank=True)
    broken_reason = models.TextField(blank=True)
    connected_at = models.DateTimeField(auto_now_add=True)
    last_refreshed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Google for {self.agent_id} ({self.status})"

    @property
    def granted_scopes(self) -> frozenset[str]:
        return frozenset(((self.token or {}).get("scope") or "").split())

    def grants(self, capability: Capability) -> bool:
        return capability.scope in self.granted_scopes

    @property
    def granted_capabilities(self) -> list[Capability]:
        return [BY_SCOPE[scope] for scope in sorted(self.granted_scopes) if scope in BY_SCOPE]

    @property
    def refresh_token(self) -> str | None:
        return (self.token or {}).get("refresh_token")

    @property
    def access_token(self) -> str:
        return self.token["access_token"]

    def expires_within(self, seconds: float) -> bool:
        """Whether the access token has less than ``seconds`` left (or no known expiry)."""
        expires_at = (self.token or {}).get("expires_at")
        return expires_at is None or expires_at - time.time() < seconds


class PendingRevocation(models.Model):
    """A token to revoke at Google that Google did not take when the owner
    disconnected. Kept sealed until the revoke succeeds (a Celery task and
    beat retry it); the integration it came from is gone already."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+")
    token = EncryptedTextField(editable=False)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"revocation for {self.agent_id} ({self.attempts} attempts)"
