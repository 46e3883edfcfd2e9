"""Agent writes that span rows or leave the process."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from agents.models import Agent, AgentEvent, AIProvider


@transaction.atomic
def create_agent(
    *,
    owner: Any,
    name: str,
    provider: str = AIProvider.OPENAI,
    provider_key: str | None = None,
    actor: Any = None,
    source: str = "owner",
    **limits: Any,
) -> Agent:
    """Create an agent awaiting payment; raises ValidationError on bad input.

    ``limits`` are Agent fields such as ``cpu_limit`` or ``daily_token_cap``;
    anything not given takes the model's default.
    """
    agent = Agent(owner=owner, name=name, ai_provider=provider, **limits)
    agent.ai_api_key = provider_key or None
    agent.full_clean()
    agent.save()
    AgentEvent.objects.create(
        agent=agent, actor=actor, source=source, to_status=agent.status, reason="created"
    )
    return agent
