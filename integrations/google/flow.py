"""The state of a connect in progress, kept in the owner's session.

Each connect gets a random ``state`` and a PKCE ``code_verifier``; both stay in
the session of the browser that began it, with the agent and capability it is
for. The callback takes the entry out (single use), so a forged state, a state
from another session, or one replayed after use finds nothing.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

SESSION_KEY = "integrations.google.flows"
FLOW_TTL_SECONDS = 600  # Google's codes live minutes; an abandoned consent screen expires
MAX_FLOWS = 5  # a few tabs at once; older ones are dropped


@dataclass(frozen=True)
class Flow:
    state: str
    agent_id: str
    capability: str
    code_verifier: str


def start_flow(session: MutableMapping[str, Any], *, agent_id: str, capability: str) -> Flow:
    flow = Flow(
        state=secrets.token_urlsafe(32),
        agent_id=agent_id,
        capability=capability,
        # RFC 7636: 43 to 128 unreserved characters; 64 here, from 48 random bytes.
        code_verifier=secrets.token_urlsafe(48),
    )
    now = time.time()
    flows = [f for f in session.get(SESSION_KEY, []) if f["expires"] > now][-(MAX_FLOWS - 1) :]
    flows.append(
        {
            "state": flow.state,
            "agent_id": flow.agent_id,
            "capability": flow.capability,
            "code_verifier": flow.code_verifier,
            "expires": now + FLOW_TTL_SECONDS,
        }
    )
    session[SESSION_KEY] = flows
    return flow


def take_flow(session: MutableMapping[str, Any], state: str) -> Flow | None:
    """The flow ``state`` names, removed from the session; None if there is none
    (forged, from another session, already used, or expired)."""
    flows = session.get(SESSION_KEY, [])
    found = None
    for entry in flows:
        # Compare every entry in constant time: the state is a secret.
        if hmac.compare_digest(entry["state"].encode(), state.encode()):
            found = entry
    if found is None:
        return None
    session[SESSION_KEY] = [entry for entry in flows if entry is not found]
    if found["expires"] <= time.time():
        return None
    return Flow(
        state=found["state"],
        agent_id=found["agent_id"],
        capability=found["capability"],
        code_verifier=found["code_verifier"],
    )
