"""What the agent's integrations page shows."""

from __future__ import annotations

from dataclasses import dataclass

from agents.models import Agent
from integrations.google.capabilities import CAPABILITIES, Capability, google_configured, offered
from integrations.google.models import GoogleIntegration, IntegrationStatus


@dataclass(frozen=True)
class CapabilityState:
    capability: Capability
    state: str  # not_configured · off · not_connected · connected · not_granted · broken
    label: str

    @property
    def can_connect(self) -> bool:
        return self.state in {"not_connected", "not_granted", "broken"}


STATE_LABELS = {
    "not_configured": "Not available on this Safer-Claw",
    "off": "Switched off by the operator",
    "not_connected": "Not connected",
    "connected": "Connected",
    "not_granted": "Not granted",
    "broken": "Broken: reconnect",
}


def capability_states(*, agent: Agent) -> tuple[GoogleIntegration | None, list[CapabilityState]]:
    """The agent's connection and each capability's state, for its integrations page."""
    integration = GoogleIntegration.objects.filter(agent=agent).first()
    rows = []
    for capability in CAPABILITIES.values():
        if not google_configured():
            state = "not_configured"
        elif not offered(capability):
            state = "off"
        elif integration is None:
            state = "not_connected"
        elif integration.status == IntegrationStatus.BROKEN and (integration.grants(capability)):
            state = "broken"
        elif integration.grants(capability):
            state = "connected"
        elif capability.scope in integration.not_granted_scopes:
            state = "not_granted"
        else:
            state = "not_connected"
        rows.append(CapabilityState(capability=capability, state=state, label=STATE_LABELS[state]))
    return integration, rows
