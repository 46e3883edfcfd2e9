"""Every page carries a strict Content-Security-Policy, and nothing we serve needs
an exception to it (the browser tests check the pages as Chromium runs them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings

pytestmark = pytest.mark.django_db

REQUIRED = [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "frame-ancestors 'none'",
]


def directives(response) -> dict[str, list[str]]:
    policy = response["Content-Security-Policy"]
    return {
        name: values
        for name, *values in (part.split() for part in policy.split(";") if part.strip())
    }


@pytest.mark.parametrize(
    "path", ["/accounts/login/", "/accounts/signup/", "/api/docs/", "/admin/login/", "/api/me/"]
)
def test_every_answer_carries_the_policy(client, path):
    response = client.get(path)
    policy = response["Content-Security-Policy"]
    for directive in REQUIRED:
        assert directive in policy, (path, directive)
    assert "unsafe" not in policy


def test_forms_may_go_to_us_and_to_stripes_pages_only(client, settings):
    settings.STRIPE_API_BASE = ""
    form_action = directives(client.get("/accounts/login/"))["form-action"]
    assert form_action == ["'self'", "https://checkout.stripe.com", "https://billing.stripe.com"]
    # A local stand-in for Stripe serves its hosted pages from its own origin.
    settings.STRIPE_API_BASE = "http://127.0.0.1:4242/v1"
    form_action = directives(client.get("/accounts/login/"))["form-action"]
    assert form_action[-1] == "http://127.0.0.1:4242"


def test_the_api_docs_load_nothing_from_another_origin(client):
    page = client.get("/api/docs/").content.decode()
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources, page
    assert all(source.startswith("/") for source in sources), sources
    assert "cdn.jsdelivr.net" not in page
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)  # no inline script
    assert "<style" not in page
    script = client.get("/api/docs/?script=")
    assert script["Content-Type"] == "application/javascript"
    assert "SwaggerUIBundle(" in script.content.decode()


TEMPLATE_COMMENT = re.compile(r"{#.*?#}|{% comment %}.*?{% endcomment %}", re.DOTALL)
INLINE = [
    (re.compile(r"<script(?![^>]*\b(?:src=|type=\"application/json\"))"), "inline <script>"),
    (re.compile(r"\sstyle=\""), "style= attribute"),
    (re.compile(r"<style"), "<style> element"),
    (re.compile(r"\son[a-z]+=\""), "inline event handler"),
    (re.compile(r"javascript:"), "javascript: URL"),
]


def test_no_template_of_ours_needs_an_inline_exception():
    roots = [Path(settings.BASE_DIR) / "templates", *Path(settings.BASE_DIR).glob("*/templates")]
    checked = 0
    for root in roots:
        for template in root.rglob("*.html"):
            text = TEMPLATE_COMMENT.sub("", template.read_text())
            checked += 1
            for pattern, what in INLINE:
                assert not pattern.search(text), f"{template}: {what}"
    assert checked >= 10
