"""Fixtures for the Google tests: the stand-in (one per test process), our
settings pointed at it, and the owner's connect flow, end to end."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from django.test import Client

from agents.models import Agent
from integrations.google.tests.google import StandIn, connect_as_owner


@pytest.fixture(scope="session")
def google_standin() -> Iterator[StandIn]:
    standin = StandIn.start()
    yield standin
    standin.stop()


@pytest.fixture
def google(settings, google_standin: StandIn) -> StandIn:
    """The control plane configured for the stand-in, which serves nothing yet."""
    for name, value in google_standin.settings().items():
        setattr(settings, name, value)
    google_standin.reset()
    return google_standin


@pytest.fixture
def owner(client: Client, alice) -> Client:
    client.force_login(alice)
    return client


@pytest.fixture
def connect(owner: Client, agent: Agent, google: StandIn) -> Callable[..., object]:
    """Connect a capability of Alice's agent the way she would: our connect button,
    Google's consent screen (``consent``: grant, allow, account), our callback.
    Returns the callback's response."""

    def run(capability: str, *, on: Agent = agent, **consent):
        return connect_as_owner(owner, google, on, capability, **consent)

    return run


@pytest.fixture
def perform():
    """Call a registered tool the way the tool endpoint does (arguments already valid)."""
    from agents.tools import ToolCall, registered_tool

    def run(name: str, agent: Agent, **arguments):
        return registered_tool(name).perform(ToolCall(agent=agent, arguments=arguments))

    return run


# For the live tests: a real control plane and a scripted model (agents' fixtures), and
# the inbox's LISTEN connection closed before the test database is dropped.
from agents.tests.conftest import _stop_inbox_listener  # noqa: E402, F401
from agents.tests.live_agents import control_plane, scripted_model  # noqa: E402, F401
