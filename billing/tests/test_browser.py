"""The journey in a real browser: plan -> Stripe checkout -> the agent's page following
payment and provisioning live -> running. Headless Chromium (Debian's /usr/bin/chromium)
driven by Playwright, against the live test server, the fake Stripe and a real dockerd.

Screenshots go to $SAFERCLAW_SCREENSHOTS (default: the test's tmp_path).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.db import connections
from django.test import Client

from agents.models import Agent, AgentStatus
from billing.tests.factories import PlanFactory
from droplets.containers import container_state

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def browser(monkeypatch):
    if not CHROMIUM.exists():
        pytest.fail(
            "browser tests drive Debian's chromium: apt-get install chromium", pytrace=False
        )
    # Playwright's sync API keeps an event loop on this thread; the ORM calls the
    # test makes between page actions are still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()
        # Queries made while Playwright's loop runs get their own connection
        # (asgiref keys connections by context); close it before teardown.
        connections.close_all()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("SAFERCLAW_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def signed_in_page(browser, live_server, user):
    client = Client()
    client.force_login(user)
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}]
    )
    return context.new_page()


@pytest.mark.docker
def test_paying_in_the_browser_shows_the_agent_come_up_live(
    browser, shots, live_server, stripe_api, alice, local_droplet
):
    stripe_api.webhook_url = f"{live_server.url}/webhooks/stripe"
    stripe_api.delivery_delay = 2.5  # Stripe's events often trail the redirect
    PlanFactory(name="Basic", stripe_price_id="price_starter", monthly_price="9.00")
    page = signed_in_page(browser, live_server, alice)

    page.goto(f"{live_server.url}/dashboard/")
    page.click("text=New agent")
    page.fill("input[name=name]", "helper")
    page.select_option("select[name=provider]", "openai")
    page.fill("input[name=provider_key]", "sk-test-provider-key")
    page.screenshot(path=shots / "1-plan-chooser.png", full_page=True)
    page.click("text=Continue to payment")

    page.wait_for_selector("#pay")  # Stripe's hosted checkout (the fake's)
    page.click("#pay")
    page.wait_for_selector("#agent-progress")  # back from Stripe, before its events
    assert page.text_content("#agent-status-label") == "Pending payment"
    assert page.is_visible("text=Waiting for Stripe to confirm your payment")
    page.screenshot(path=shots / "2-waiting-for-payment.png", full_page=True)

    # Nobody touches the page from here: it follows the agent by itself.
    page.wait_for_selector("#agent-status-label.status-running", timeout=60_000)
    page.wait_for_selector("text=Payment received.")  # reloaded once settled
    page.screenshot(path=shots / "3-running.png", full_page=True)
    assert page.text_content("#agent-outcome") == "Your agent is running."
    assert not page.is_visible("text=Not paid yet")
    agent = Agent.objects.get(owner=alice, name="helper")
    assert agent.status == AgentStatus.RUNNING
    assert container_state(local_droplet, agent.container_id).running


def test_a_failed_deploy_shows_its_reason_on_the_page(
    browser, shots, live_server, dev_mode, alice, settings, eager_retries
):
    from droplets.tests.factories import DropletFactory

    settings.DEPLOY_MAX_RETRIES = 1
    DropletFactory(name="dead", docker_url="unix:///run/saferclaw-test-no-such-engine/docker.sock")
    PlanFactory(name="Free trial", stripe_price_id="")
    page = signed_in_page(browser, live_server, alice)

    page.goto(f"{live_server.url}/billing/new-agent/")
    assert page.is_visible("#billing-dev-mode")
    page.click("text=Free trial")
    page.fill("input[name=name]", "unlucky")
    page.click("text=Start agent (development mode, no payment)")

    page.wait_for_selector("#agent-status-label.status-failed", timeout=60_000)
    page.screenshot(path=shots / "4-failed.png", full_page=True)
    outcome = page.text_content("#agent-outcome")
    assert outcome.startswith(
        "Deploy failed: no capacity: every droplet is full, unreachable or in maintenance"
    )
    assert "droplet dead: unreachable" in outcome  # which droplet failed, and how
    assert page.is_visible("text=We have emailed you")
