"""Finding the agent an operator command names."""

from __future__ import annotations

import uuid

from django.core.management.base import CommandError

from agents.models import Agent


def agent_from_argument(value: str) -> Agent:
    try:
        agent_id = uuid.UUID(value)
    except ValueError as exc:
        raise CommandError(f"{value!r} is not an agent id (a UUID)") from exc
    agent = Agent.objects.filter(pk=agent_id).select_related("droplet", "owner").first()
    if agent is None:
        raise CommandError(f"no agent with id {agent_id}")
    return agent
