"""Real agents end to end: the control plane under uvicorn where the droplet firewall
lets containers reach it, a scriptable model behind the gateway, and agents deployed
from the real runtime image with every hardening flag.

The model stand-in is gateway/tests/fake_providers.py (OpenAI's wire format, from
gateway/provider_standin.py); here its answer is a function of the request it got,
so a test can play an obedient, a stalling or a fully compromised model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
import uvicorn
from django.db import connections
from knox.models import AuthToken

from agents.builtin_tools import BUILTIN_TOOLS
from agents.models import Agent
from agents.services import create_agent, deploy_agent
from droplets.models import Droplet
from droplets.tests.fixtures import TEST_CONTROL_PLANE_PORT
from gateway.models import ModelPrice
from gateway.provider_standin import Reply
from gateway.proxy import close_all as close_gateway
from gateway.proxy import forget_prices
from gateway.tests.fake_providers import FakeProviders, RecordedRequest

GATEWAY_ADDRESS = "172.31.1.1"  # droplet 1's agent network gateway: the host, as containers see it
CONTROL_PLANE_URL = f"http://{GATEWAY_ADDRESS}:{TEST_CONTROL_PLANE_PORT}"
OWNER_API = f"http://127.0.0.1:{TEST_CONTROL_PLANE_PORT}"
MODEL = "gpt-test"
ANTHROPIC_MODEL = "claude-test"


class ScriptedModel(FakeProviders):
    """The provider stand-in, answering with ``script(request)`` when a script is set."""

    def __init__(self) -> None:
        super().__init__()
        self.script: Callable[[RecordedRequest], Reply] | None = None

    def take_reply(self) -> Reply:
        if self.script is None:
            return super().take_reply()
        return self.script(self.requests[-1])  # recorded just before, by the same handler

    def model_requests(self, path: str = "/chat/completions") -> list[dict[str, Any]]:
        return [r.json for r in self.requests if r.path.endswith(path)]


class ControlPlane:
    """Our ASGI app (Django and the gateway) on the port the test firewall opens."""

    def __init__(self) -> None:
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

        from safer_claw.asgi import application

        config = uvicorn.Config(
            # Static files as well, for the browser tests (production serves them apart).
            ASGIStaticFilesHandler(application),
            host="0.0.0.0",
            port=TEST_CONTROL_PLANE_PORT,
            loop="asyncio",
            http="h11",
            lifespan="off",
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the control plane did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._server is None:
            return
        close_gateway()  # its pools live on the server's loop: close them while it runs
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._server = None
        connections.close_all()


@pytest.fixture
def scripted_model(settings) -> Iterator[ScriptedModel]:
    model = ScriptedModel().start()
    settings.OPENAI_UPSTREAM_URL = model.openai_base
    settings.ANTHROPIC_UPSTREAM_URL = model.anthropic_base
    settings.AGENT_MODEL_OPENAI = MODEL
    settings.AGENT_MODEL_ANTHROPIC = ANTHROPIC_MODEL
    yield model
    model.stop()


@pytest.fixture
def control_plane(transactional_db, settings, local_droplet, agent_firewall, scripted_model):
    """The control plane serving containers on droplet 1, with a priced stand-in model."""
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, GATEWAY_ADDRESS]
    settings.REDIS_URL = ""
    for provider, model in (("openai", MODEL), ("anthropic", ANTHROPIC_MODEL)):
        ModelPrice.objects.update_or_create(
            provider=provider,
            model=model,
            defaults={
                "input_per_mtok": Decimal("1"),
                "cached_input_per_mtok": Decimal("1"),
                "cache_write_5m_per_mtok": Decimal("1"),
                "output_per_mtok": Decimal("1"),
            },
        )
    forget_prices()
    Droplet.objects.filter(pk=local_droplet.pk).update(control_plane_url=CONTROL_PLANE_URL)
    server = ControlPlane()
    server.start()
    yield server
    server.stop()
    forget_prices()


@dataclass
class Owner:
    """The owner's side, over HTTP with an API token, as a script would."""

    agent: Agent
    client: httpx.Client

    def send(self, content: str) -> dict[str, Any]:
        response = self.client.post(
            f"/api/agents/{self.agent.id}/messages", json={"content": content}
        )
        assert response.status_code == 201, response.text
        return response.json()

    def conversation(self) -> list[dict[str, Any]]:
        response = self.client.get(f"/api/agents/{self.agent.id}/messages")
        assert response.status_code == 200, response.text
        return response.json()["messages"]

    def reply_to(self, message_id: int, *, timeout: float = 60) -> dict[str, Any]:
        """The reply to an inbound message, once it lands; with its run (steps, counters)."""

        def answered():
            messages = self.conversation()
            inbound = next(m for m in messages if m["id"] == message_id)
            replies = [m for m in messages if m["in_reply_to"] == inbound["run"]["id"]]
            return (replies, inbound["run"]) if replies else None

        replies, run = wait_for(answered, timeout=timeout, what=f"a reply to {message_id}")
        return {"replies": replies, "run": run}


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def deploy_live_agent(
    owner_user,
    *,
    name: str = "live",
    provider: str = "openai",
    tools: tuple[str, ...] = (),
    **limits: Any,
) -> Owner:
    """A paid agent with the built-in tools (and ``tools``), deployed on droplet 1 from
    the runtime image."""
    agent = create_agent(
        owner=owner_user, name=name, provider=provider, provider_key="sk-live-owner-key-0123456789"
    )
    allowed = [tool.name for tool in BUILTIN_TOOLS] + list(tools)
    Agent.objects.filter(pk=agent.pk).update(billing_active=True, allowed_tools=allowed, **limits)
    agent = deploy_agent(agent=Agent.objects.get(pk=agent.pk))
    assert agent.status == "running", agent.status_reason
    _, token = AuthToken.objects.create(owner_user)
    client = httpx.Client(
        base_url=OWNER_API, headers={"Authorization": f"Token {token}"}, timeout=30, trust_env=False
    )
    return Owner(agent=agent, client=client)
