"""The gateway's test fixtures: fake OpenAI and Anthropic servers (fake_providers.py),
the gateway under uvicorn and running agents (fixtures.py)."""

from __future__ import annotations

from gateway.tests.fake_providers import fake_provider_server, fake_providers
from gateway.tests.fixtures import gateway, make_agent, prices

__all__ = ["fake_provider_server", "fake_providers", "gateway", "make_agent", "prices"]
