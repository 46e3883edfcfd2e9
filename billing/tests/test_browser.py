"""The journey in a real browser: plan -> Stripe checkout -> the agent's page following
payment and provisioning live -> running. Headless Chromium (Debian's /usr/bin/chromium)
driven by Playwright, against the live test server, the fake Stripe and a real dockerd.

Every page a test visits is watched (``PageWatch``): a console error, an uncaught
exception, a Content-Security-Policy violation or a request to another origin
fails the test, and each of our pages must carry the policy.

Screenshots go to $SAFERCLAW_SCREENSHOTS (default: the test's tmp_path).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.db import connections
from django.test import Client

from agents.models import Agent, AgentStatus
from billing.tests.factories import PlanFactory
from droplets.containers import container_state
from safer_claw.accounts.tests.factories import PASSWORD, UserFactory
from safer_claw.accounts.tests.helpers import enable_totp, totp

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


# Reports each `securitypolicyviolation` event to the test (Playwright injects this
# script itself, so the page's own policy does not stop it).
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.reportCspViolation(
    `${event.violatedDirective} blocked ${event.blockedURI || "inline"} on ${document.URL}`
  );
});
"""
POLICY = "default-src 'self'"


class PageWatch:
    """What went wrong on the pages of one browser context: console errors, page
    errors, CSP violations, and requests for anything from another origin."""

    def __init__(self, context, origin: str) -> None:
        self.origin = origin
        self.problems: list[str] = []
        context.expose_function("reportCspViolation", self._violation)
        context.add_init_script(REPORT_VIOLATIONS)
        context.on("page", self.watch)

    def watch(self, page) -> None:
        # Only our pages are held to it: the fake Stripe's hosted page is not ours.
        page.on("console", lambda message: self._console(page, message))
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("request", self._request)

    def _violation(self, text: str) -> None:
        self.problems.append(f"CSP violation: {text}")

    def _console(self, page, message) -> None:
        if message.type == "error" and _origin(page.url) == self.origin:
            self.problems.append(f"console error: {message.text} ({message.location})")

    def _request(self, request) -> None:
        page_url = request.frame.url if request.frame else ""
        ours = _origin(page_url) == self.origin
        foreign = _origin(request.url) not in (self.origin, "")
        # A document request is a navigation (a link, a redirect to Stripe): allowed.
        if ours and foreign and request.resource_type != "document":
            self.problems.append(f"{page_url} loaded {request.url} from another origin")

    def assert_clean(self) -> None:
        assert self.problems == [], "\n".join(self.problems)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") else ""


def new_page(browser, live_server):
    """A page in a fresh context, watched; returns (page, watch)."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    watch = PageWatch(context, _origin(live_server.url))
    return context.new_page(), watch


def signed_in_page(browser, live_server, user):
    """A page already signed in as ``user`` (a session cookie); returns (page, watch)."""
    client = Client()
    client.force_login(user)
    page, watch = new_page(browser, live_server)
    page.context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}]
    )
    return page, watch


def visit(page, url: str):
    """Open ``url`` and check it carries our Content-Security-Policy."""
    response = page.goto(url)
    assert response.ok, f"{url}: {response.status}"
    assert POLICY in response.headers.get("content-security-policy", ""), url
    return response


@pytest.mark.docker
def test_paying_in_the_browser_shows_the_agent_come_up_live(
    browser, shots, live_server, stripe_api, alice, local_droplet
):
    stripe_api.webhook_url = f"{live_server.url}/webhooks/stripe"
    stripe_api.delivery_delay = 2.5  # Stripe's events often trail the redirect
    PlanFactory(name="Basic", stripe_price_id="price_starter", monthly_price="9.00")
    page, watch = signed_in_page(browser, live_server, alice)

    visit(page, f"{live_server.url}/dashboard/")
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
    # The form posted to us and was redirected to Stripe's page: form-action allows it.
    watch.assert_clean()


def test_a_failed_deploy_shows_its_reason_on_the_page(
    browser, shots, live_server, dev_mode, alice, settings, eager_retries
):
    from droplets.tests.factories import DropletFactory

    settings.DEPLOY_MAX_RETRIES = 1
    DropletFactory(name="dead", docker_url="unix:///run/saferclaw-test-no-such-engine/docker.sock")
    PlanFactory(name="Free trial", stripe_price_id="")
    page, watch = signed_in_page(browser, live_server, alice)

    visit(page, f"{live_server.url}/billing/new-agent/")
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
    watch.assert_clean()


def test_account_pages_and_the_api_docs_keep_to_the_policy(browser, shots, live_server, alice):
    """Sign in, the API docs, a token, an authenticator app: each page as a person
    sees it, with nothing blocked, nothing from another origin, no error."""
    page, watch = new_page(browser, live_server)
    visit(page, f"{live_server.url}/accounts/login/")
    page.fill("input[name=login]", alice.email)
    page.fill("input[name=password]", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(f"{live_server.url}/dashboard/")

    visit(page, f"{live_server.url}/api/docs/")
    page.wait_for_selector("#operations-tag-agents")  # Swagger UI ran and read the schema
    page.screenshot(path=shots / "5-api-docs.png", full_page=True)

    visit(page, f"{live_server.url}/accounts/api-tokens/")
    page.click("text=Create a token")
    assert page.text_content("#new-token-value").startswith("sc_api_")

    visit(page, f"{live_server.url}/accounts/2fa/")
    page.goto(f"{live_server.url}/accounts/2fa/totp/activate/")  # the password again first
    page.fill("input[name=password]", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_selector("img[src^='data:image/svg+xml']")  # the QR code
    page.screenshot(path=shots / "6-totp.png", full_page=True)
    watch.assert_clean()


def test_admin_keeps_to_the_policy(browser, live_server, alice):
    operator = UserFactory(email="ops@example.com", is_staff=True, is_superuser=True)
    secret = enable_totp(operator)
    page, watch = new_page(browser, live_server)
    visit(page, f"{live_server.url}/admin/")  # to the sign-in page, and back after it
    page.fill("input[name=login]", operator.email)
    page.fill("input[name=password]", PASSWORD)
    page.click("main button[type=submit]")
    page.fill("input[name=code]", totp(secret))
    page.click("main button[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")

    for path in [
        "/admin/",
        "/admin/accounts/user/",
        f"/admin/accounts/user/{alice.pk}/change/",
        "/admin/billing/plan/add/",
        "/admin/agents/killswitchcall/",
    ]:
        visit(page, f"{live_server.url}{path}")
    watch.assert_clean()


def test_the_watch_catches_a_policy_violation(browser, live_server):
    """The check above can fail: an inline script is blocked, and reported."""
    page, watch = new_page(browser, live_server)
    visit(page, f"{live_server.url}/accounts/login/")
    page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.inlineRan = true'; document.body.appendChild(s); }"
    )
    page.wait_for_timeout(200)
    assert page.evaluate("() => window.inlineRan") is None
    assert any("CSP violation: script-src" in problem for problem in watch.problems)
    with pytest.raises(AssertionError):
        watch.assert_clean()
