"""Gateway fixtures: the app under uvicorn and a running agent with a token."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest

from agents.models import Agent, AgentStatus
from agents.services import create_agent
from agents.tokens import issue_agent_token
from gateway.models import ModelPrice
from gateway.proxy import close_all, forget_prices
from gateway.tests.live import start_live_server

PROVIDER_KEY = "sk-live-owner-provider-key-0123456789"
ANTHROPIC_KEY = "sk-ant-api03-owner-provider-key-0123456789"


@pytest.fixture
def gateway(transactional_db, settings, fake_providers):
    """Our ASGI app on a real port, forwarding to the fake providers."""
    forget_prices()
    live = start_live_server()
    yield live.url
    close_all()  # on the server's loop, while it still runs
    live.stop()
    forget_prices()


@pytest.fixture
def prices(transactional_db):
    ModelPrice.objects.update_or_create(
        provider="openai",
        model="gpt-test",
        defaults={
            "input_per_mtok": Decimal("2.50"),
            "cached_input_per_mtok": Decimal("1.25"),
            "cache_write_5m_per_mtok": Decimal("0"),
            "cache_write_1h_per_mtok": Decimal("0"),
            "output_per_mtok": Decimal("10.00"),
        },
    )
    ModelPrice.objects.update_or_create(
        provider="anthropic",
        model="claude-test",
        defaults={
            "input_per_mtok": Decimal("3.00"),
            "cached_input_per_mtok": Decimal("0.30"),
            "cache_write_5m_per_mtok": Decimal("3.75"),
            "cache_write_1h_per_mtok": Decimal("6.00"),
            "output_per_mtok": Decimal("15.00"),
        },
    )


@dataclass
class RunningAgent:
    agent: Agent
    token: str

    def refresh(self) -> Agent:
        self.agent.refresh_from_db()
        return self.agent


@pytest.fixture
def make_agent(transactional_db, prices):
    from safer_claw.accounts.tests.factories import UserFactory

    owner = UserFactory()

    def make(provider: str = "openai", **fields) -> RunningAgent:
        key = PROVIDER_KEY if provider == "openai" else ANTHROPIC_KEY
        agent = create_agent(
            owner=owner,
            name=f"gw-{Agent.objects.count()}",
            provider=provider,
            provider_key=key,
        )
        Agent.objects.filter(pk=agent.pk).update(
            **{"status": AgentStatus.RUNNING, "billing_active": True, **fields}
        )
        agent.refresh_from_db()
        return RunningAgent(agent=agent, token=issue_agent_token(agent=agent))

    return make
