"""Agent tokens: random, shown once, stored as a SHA-256 hash, revocable.

A token carries 256 random bits, so a fast hash is enough (nothing to brute
force) and lookups go straight to a unique index. Every check reads the
database, so a revocation applies to the very next call on every worker.
"""

from __future__ import annotations

import hashlib
import secrets

from django.db import transaction
from django.utils import timezone

from agents.models import Agent, AgentToken


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@transaction.atomic
def issue_agent_token(*, agent: Agent) -> str:
    """Revoke the agent's tokens and return a new one (the only time it is seen)."""
    revoke_agent_tokens(agent=agent)
    raw = AgentToken.PREFIX + secrets.token_urlsafe(32)
    AgentToken.objects.create(agent=agent, token_hash=hash_token(raw), hint=raw[:10])
    return raw


def revoke_agent_tokens(*, agent: Agent) -> int:
    return AgentToken.objects.filter(agent=agent, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )


def looks_like_token(raw: str) -> bool:
    """Cheap shape check before any lookup: our prefix and a sane length."""
    return raw.startswith(AgentToken.PREFIX) and len(raw) <= 100


def token_agent(raw: str) -> Agent | None:
    """The agent an active token belongs to, or None."""
    if not looks_like_token(raw):
        return None
    token = (
        AgentToken.objects.select_related("agent")
        .filter(token_hash=hash_token(raw), revoked_at__isnull=True)
        .first()
    )
    return token.agent if token else None
