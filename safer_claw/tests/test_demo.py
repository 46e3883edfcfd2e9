"""`./dev demo`'s set-up, for real: the local engine as a droplet whose agents dial the
host at their network's gateway, behind the droplet firewall, answered by the demo's
model stand-in (safer_claw/demo_model.py) under uvicorn, as the demo runs it."""

from __future__ import annotations

import socket
import threading
import time
from decimal import Decimal

import pytest
import uvicorn
from allauth.account.models import EmailAddress
from django.conf import settings as django_settings
from django.contrib.auth import authenticate

from agents.inbox_wakeups import stop_listener
from agents.tests.live_agents import ControlPlane, deploy_live_agent
from droplets.models import Droplet
from droplets.tests.fixtures import TEST_CONTROL_PLANE_PORT
from gateway.models import ModelPrice
from gateway.proxy import forget_prices
from safer_claw.demo import DEMO_DROPLET, prepare_demo
from safer_claw.demo_model import PREFIX, app, reply_to

EMAIL = "demo@example.com"


def test_the_demo_model_quotes_the_last_thing_the_owner_said():
    payload = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are an agent."},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "second"}]},
        ],
    }
    assert reply_to(payload).text == f"{PREFIX} second"


@pytest.fixture
def demo_model(settings):
    """The stand-in on a free loopback port, where the gateway forwards model calls."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "the demo model did not start"
        assert time.monotonic() < deadline, "the demo model did not start in 15 s"
        time.sleep(0.02)
    settings.OPENAI_UPSTREAM_URL = f"http://127.0.0.1:{port}/v1"
    yield
    server.should_exit = True
    thread.join(timeout=15)


@pytest.mark.docker
def test_after_the_demo_setup_an_agent_runs_and_answers(
    transactional_db, settings, droplet_env, clean_engines, agent_firewall, demo_model
):
    settings.RUNTIME_IMAGE = droplet_env["SAFERCLAW_RUNTIME_IMAGE"]
    settings.REDIS_URL = ""
    demo = prepare_demo(
        docker_url=droplet_env["SAFERCLAW_D1_DOCKER_URL"], port=TEST_CONTROL_PLANE_PORT, email=EMAIL
    )

    # The droplet's agents dial the host where they see it, never 127.0.0.1.
    droplet = Droplet.objects.get(name=DEMO_DROPLET)
    assert droplet.control_plane_url == f"http://{demo.gateway}:{TEST_CONTROL_PLANE_PORT}"
    assert demo.control_plane_url == droplet.control_plane_url
    assert droplet.agent_subnet == demo.subnet
    assert not demo.gateway.startswith("127.")
    # The printed credentials sign in: a verified address and that password.
    assert EmailAddress.objects.get(email=EMAIL).verified
    assert authenticate(email=EMAIL, password=demo.password) is not None

    # A second run refreshes the same droplet and user, with a new password.
    again = prepare_demo(
        docker_url=droplet_env["SAFERCLAW_D1_DOCKER_URL"], port=TEST_CONTROL_PLANE_PORT, email=EMAIL
    )
    assert Droplet.objects.count() == 1
    assert again.password != demo.password

    settings.ALLOWED_HOSTS = [*django_settings.ALLOWED_HOSTS, demo.gateway]
    ModelPrice.objects.update_or_create(
        provider="openai",
        model=settings.AGENT_MODEL_OPENAI,
        defaults={
            "input_per_mtok": Decimal("0.15"),
            "cached_input_per_mtok": Decimal("0.075"),
            "cache_write_5m_per_mtok": Decimal("0.15"),
            "output_per_mtok": Decimal("0.60"),
        },
    )
    forget_prices()
    server = ControlPlane()
    server.start()
    try:
        owner = deploy_live_agent(authenticate(email=EMAIL, password=again.password), name="demo")
        assert owner.agent.droplet_id == droplet.id
        owner.client.headers["Authorization"] = f"Token {again.api_token}"  # the printed one
        sent = owner.send("Hello, are you there?")
        answered = owner.reply_to(sent["id"], timeout=90)
        assert [m["content"] for m in answered["replies"]] == [f"{PREFIX} Hello, are you there?"]
        assert answered["run"]["status"] == "done"
        assert answered["run"]["model_calls"] == 1
    finally:
        server.stop()
        forget_prices()
        stop_listener()  # its LISTEN connection goes before the test database is dropped
