"""A new user's whole journey on the dashboard, in headless Chromium (Debian's), against
the control plane under uvicorn, a real dockerd running the real runtime image, and
the scripted model stand-in: sign up, pick a plan (development billing), watch the
agent come up, chat, add a schedule, stop and start, run the kill switch's curl,
stop all, delete; the main pages again on a phone-sized screen; a second user gets
404 by URL.

The main pages pass axe-core (vendored) with no serious or critical violation. Every
page is watched: a console error, an uncaught exception, a CSP violation, a
request to another origin, a failed request or an error answer fails the test.
Screenshots go to $SAFERCLAW_SCREENSHOTS (default: the test's tmp_path).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from django.test import Client

from agents.models import Agent, AgentStatus
from agents.tasks import send_cap_alerts
from agents.tests.live_agents import OWNER_API
from billing.tests.factories import PlanFactory
from billing.tests.test_browser import POLICY, PageWatch, _origin, browser, shots  # noqa: F401
from droplets.containers import container_state
from gateway.provider_standin import Reply
from safer_claw.accounts.tests.factories import UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.docker, pytest.mark.django_db(transaction=True)]
S = AgentStatus
EMAIL = "newcomer@example.com"
PASSWORD = "a long and unusual passphrase 42"
ANSWER = "Hello! I am your agent, answering from my container."
PHONE = {"width": 390, "height": 844}
AXE = Path(__file__).parent / "vendor" / "axe-core-4.14.1" / "axe.min.js"


@pytest.fixture
def dev_mode(settings) -> None:
    """No Stripe keys, as on a fresh machine: choosing a plan activates it at once."""
    settings.STRIPE_SECRET_KEY = ""
    settings.STRIPE_WEBHOOK_SECRET = ""
    settings.BILLING_DEV_MODE = True


class StrictWatch(PageWatch):
    """PageWatch, and also any request that fails or any answer of ours that is an error."""

    def watch(self, page) -> None:
        super().watch(page)
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _failed(self, request) -> None:
        # A poll still in flight when the page navigates away is aborted: not a failure.
        if request.failure != "net::ERR_ABORTED":
            self.problems.append(
                f"request failed: {request.method} {request.url}: {request.failure}"
            )

    def _response(self, response) -> None:
        if _origin(response.url) == self.origin and response.status >= 400:
            self.problems.append(f"{response.status} for {response.request.method} {response.url}")


def context_for(browser, *, viewport=None, watched=True):  # noqa: F811
    context = browser.new_context(viewport=viewport or {"width": 1100, "height": 900})
    watch = StrictWatch(context, OWNER_API) if watched else None
    return context, watch


def visit(page, path: str):
    response = page.goto(f"{OWNER_API}{path}")
    assert response.ok, f"{path}: {response.status}"
    assert POLICY in response.headers.get("content-security-policy", ""), path
    return response


def label(text: str) -> re.Pattern:
    """A form field's whole label, with or without Django's trailing colon."""
    return re.compile(rf"^\s*{re.escape(text)}:?\s*$")


def sign_up(page, mailbox) -> None:
    visit(page, "/accounts/signup/")
    page.get_by_label(label("Email")).fill(EMAIL)
    page.get_by_label(label("Password")).fill(PASSWORD)
    page.get_by_label(label("Password (again)")).fill(PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r"/accounts/confirm-email/"))
    [link] = [m for mail in mailbox for m in re.findall(r"/accounts/confirm-email/\S+", mail.body)]
    page.goto(f"{OWNER_API}{link}")  # the path: the mail names the configured site
    page.click("main button[type=submit]")  # "Confirm"
    page.wait_for_url(f"{OWNER_API}/dashboard/")


def assert_accessible(page) -> None:
    """axe-core (vendored) finds no serious or critical violation on the page. It is
    evaluated through Playwright, which the page's CSP does not govern."""
    page.evaluate(AXE.read_text())
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    bad = [
        {"rule": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert bad == [], f"{page.url}: {json.dumps(bad, indent=1)}"


def no_sideways_scroll(page) -> None:
    """Laid out for the screen: nothing wider than the viewport."""
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{page.url} scrolls sideways by {overflow}px"


def test_a_new_user_runs_an_agent_from_the_dashboard(
    browser,  # noqa: F811
    shots,  # noqa: F811
    control_plane,
    scripted_model,
    local_droplet,
    dev_mode,
    mailoutbox,
):
    scripted_model.script = lambda request: Reply(text=ANSWER)
    PlanFactory(name="Trial", stripe_price_id="", monthly_price="0.00")
    context, watch = context_for(browser)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=OWNER_API)
    page = context.new_page()

    # Sign up, confirm the address, choose a plan: development billing starts it at once.
    sign_up(page, mailoutbox)
    assert page.is_visible("text=You have no agents yet.")
    page.screenshot(path=shots / "01-dashboard-empty.png", full_page=True)
    page.click("text=New agent")
    page.click("text=Trial")
    page.get_by_label(label("Name")).fill("helper")
    page.get_by_label("Provider API key").fill("sk-live-owner-key-0123456789")
    page.click("text=Start agent (development mode, no payment)")
    page.wait_for_selector("#agent-status-label.status-running", timeout=90_000)
    agent = Agent.objects.get(owner__email=EMAIL, name="helper")

    # The agent's page, from the list.
    visit(page, "/dashboard/")
    page.screenshot(path=shots / "02-dashboard.png", full_page=True)
    assert_accessible(page)
    page.click("table.agents >> text=helper")
    page.wait_for_selector("#agent-status.status-running")
    assert page.is_visible("text=No messages yet.")
    # Health, from the droplet: the container running, its CPU and memory.
    page.wait_for_selector("#health-container:has-text('running on d1-local')")
    assert " MiB of " in page.text_content("#health-resources")
    assert page.text_content("#health-restarts") == "0 / no"
    page.screenshot(path=shots / "03-agent-running.png", full_page=True)

    # Chat: the reply appears without a reload.
    page.evaluate("() => { window.notReloaded = true; }")
    page.get_by_label(label("Message")).fill("Who are you?")
    page.click("#chat-form button[type=submit]")
    page.wait_for_selector(f"#conversation .msg-agent >> text={ANSWER}", timeout=90_000)
    assert page.evaluate("() => window.notReloaded") is True
    page.click("#conversation .msg-owner details summary")
    assert page.text_content("#conversation .step-model_call td:nth-child(2)") == "gpt-test"
    assert "Answered" in page.text_content("#conversation .msg-owner summary")
    assert page.text_content("#tokens-used") != "0"  # spending moved
    page.screenshot(path=shots / "04-agent-chat.png", full_page=True)
    assert_accessible(page)

    # Lower the daily cap to just above today's use: beat's next alert round mails the
    # 80 % alert, once, and the page shows the cap nearly used.
    used = Agent.objects.get(pk=agent.pk).tokens_today
    visit(page, f"/billing/agents/{agent.pk}/")
    page.get_by_label(label("Tokens per day")).fill(str(used + 1))
    page.click("text=Save caps")
    page.wait_for_selector("text=Limits saved.")
    send_cap_alerts()  # what beat runs every minute
    send_cap_alerts()
    subjects = [mail.subject for mail in mailoutbox]
    assert subjects.count("Safer-Claw: helper has used 80 % of its daily token cap") == 1
    visit(page, f"/dashboard/agents/{agent.pk}/")
    assert page.text_content("#tokens-used") == f"{used:,}"
    assert page.get_attribute("#usage meter", "class") == "warn"

    # A schedule.
    page.get_by_label("When (cron, in the agent's time zone)").fill("30 7 * * 1-5")
    page.get_by_label("What to do").fill("Summarise my day")
    page.click("text=Add schedule")
    page.wait_for_selector("text=Schedule added.")
    assert page.is_visible(".schedules >> text=30 7 * * 1-5")

    # Stop, start.
    page.click("#stop-agent")
    page.wait_for_selector("#agent-status.status-stopped")
    assert not container_state(local_droplet, agent.container_id).running
    page.click("#start-agent")
    page.wait_for_selector("#agent-status.status-running", timeout=60_000)

    # The kill switch: revealed on request, its curl run as a person would paste it.
    page.click("#reveal-kill")
    recipe = page.text_content("#kill-recipe")
    secret = Agent.objects.get(pk=agent.pk).kill_secret
    assert f"SECRET='{secret}'" in recipe
    page.click("#copy-recipe")
    page.wait_for_selector("#copy-state >> text=Copied.")
    assert page.evaluate("() => navigator.clipboard.readText()") == recipe
    page.screenshot(path=shots / "05-kill-switch.png", full_page=True)
    assert_accessible(page)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", recipe],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert '"status": "killed"' in done.stdout.replace('":"', '": "'), done.stdout
    page.wait_for_selector("#agent-status.status-killed", timeout=30_000)  # the page follows
    page.screenshot(path=shots / "06-killed.png", full_page=True)

    # Start again, then "stop all" from the header.
    page.click("#start-agent")
    page.wait_for_selector("#agent-status.status-running", timeout=60_000)
    page.click("#stop-all")
    assert page.is_visible("text=This stops at once: helper.")
    page.screenshot(path=shots / "07-stop-all.png", full_page=True)
    assert_accessible(page)
    page.click("#confirm-stop-all")
    page.wait_for_selector("text=Stopped all your agents (helper).")
    assert Agent.objects.get(pk=agent.pk).status == S.KILLED

    # The same pages on a phone.
    phone = context.new_page()
    phone.set_viewport_size(PHONE)
    for path, name in [
        ("/dashboard/", "08-phone-dashboard"),
        (f"/dashboard/agents/{agent.pk}/", "09-phone-agent"),
        ("/dashboard/stop-all/", "10-phone-stop-all"),
        ("/billing/new-agent/", "11-phone-new-agent"),
        (f"/billing/agents/{agent.pk}/", "12-phone-billing"),
    ]:
        visit(phone, path)
        no_sideways_scroll(phone)
        phone.screenshot(path=shots / f"{name}.png", full_page=True)
    phone.close()

    # Someone else, by URL: 404 on every page of the agent.
    intruder = Client()
    intruder.force_login(UserFactory(email="mallory@example.com"))
    other, _ = context_for(browser, watched=False)
    other.add_cookies(
        [{"name": "sessionid", "value": intruder.cookies["sessionid"].value, "url": OWNER_API}]
    )
    snoop = other.new_page()
    for path in (f"/dashboard/agents/{agent.pk}/", f"/dashboard/agents/{agent.pk}/live"):
        assert snoop.goto(f"{OWNER_API}{path}").status == 404, path
    assert snoop.is_visible("text=it is not yours") or "404" in snoop.content()
    other.close()

    # Delete, confirmed by typing its name.
    visit(page, f"/dashboard/agents/{agent.pk}/")
    page.click("text=Delete…")
    page.get_by_label("Type the agent's name to confirm").fill("helper")
    page.screenshot(path=shots / "13-delete.png", full_page=True)
    assert_accessible(page)
    page.click("#delete-form button[type=submit]")
    page.wait_for_selector("text=helper was deleted")
    assert Agent.objects.get(pk=agent.pk).status == S.DELETED
    watch.assert_clean()
    context.close()


def test_the_strict_watch_catches_an_error_answer_and_a_failed_request(browser, live_server):  # noqa: F811
    """The checks above can fail: an error answer of ours, and a request the network
    drops (Playwright stands in for the network here); an aborted fetch is no failure."""
    context = browser.new_context()
    watch = StrictWatch(context, live_server.url)
    page = context.new_page()
    page.route("**/static/css/app.css", lambda route: route.abort("connectionreset"))
    page.goto(f"{live_server.url}/no-such-page/")
    page.evaluate("() => fetch('/accounts/login/', {signal: AbortSignal.abort()}).catch(() => 0)")
    page.wait_for_timeout(300)
    assert f"404 for GET {live_server.url}/no-such-page/" in watch.problems
    assert any(p.startswith("request failed: GET") and "app.css" in p for p in watch.problems)
    assert not any("/accounts/login/" in p for p in watch.problems)
    context.close()
