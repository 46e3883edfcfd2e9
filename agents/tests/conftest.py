"""Fixtures for the conversation tests: a running, paid agent with its token."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from agents.builtin_tools import BUILTIN_TOOLS as BUILTIN
from agents.models import Agent, AgentStatus
from agents.tokens import issue_agent_token

BUILTIN_TOOLS = [tool.name for tool in BUILTIN]


@dataclass
class Live:
    """An agent as its runtime sees it: the row, and the bearer header of its token."""

    agent: Agent
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def refresh(self) -> Agent:
        self.agent.refresh_from_db()
        return self.agent


def make_running(agent: Agent, **fields) -> Live:
    """Mark ``agent`` running (no container: these tests speak for its runtime)."""
    values = {"status": AgentStatus.RUNNING, "allowed_tools": BUILTIN_TOOLS, **fields}
    Agent.objects.filter(pk=agent.pk).update(**values)
    agent.refresh_from_db()
    return Live(agent=agent, token=issue_agent_token(agent=agent))


@pytest.fixture
def live(agent) -> Live:
    return make_running(agent)


@pytest.fixture(scope="session", autouse=True)
def _stop_inbox_listener(django_db_setup, django_db_blocker):
    """The inbox's LISTEN connection goes before the test database is dropped."""
    yield
    from agents.inbox_wakeups import stop_listener

    stop_listener()


# The live agents' fixtures (a real control plane, a scripted model), for the Docker tests.
from agents.tests.live_agents import control_plane, scripted_model  # noqa: E402, F401
