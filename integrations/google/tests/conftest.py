"""Fixtures for the Google tests: the stand-in (one per test process), our
settings pointed at it, and the owner's connect flow, end to end."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from django.test import Client
from django.urls import reverse

from agents.models import Agent
from integrations.google.tests.google import StandIn, callback_path


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
        started = owner.post(
            reverse("integrations:google-connect", args=[on.pk]), {"capability": capability}
        )
        assert started.status_code == 303, started
        back = google.consent(started["Location"], **consent)
        return owner.get(callback_path(back))

    return run


@pytest.fixture
def perform():
    """Call a registered tool the way the tool endpoint does (arguments already valid)."""
    from agents.tools import ToolCall, registered_tool

    def run(name: str, agent: Agent, **arguments):
        return registered_tool(name).perform(ToolCall(agent=agent, arguments=arguments))

    return run
