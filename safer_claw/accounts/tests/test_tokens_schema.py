"""The schema's account operations are true: schemathesis calls each (valid and
invalid requests), and every answer must be documented, in the documented shape."""

from __future__ import annotations

import pytest
import schemathesis
from django.core.cache import cache
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client
from hypothesis import HealthCheck, given, settings
from knox.models import AuthToken
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from safer_claw.accounts.tests.helpers import sign_in

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.django_db(transaction=True)
def test_the_token_operations_answer_as_documented(alice):
    # A browser session fresh from the login page (it may mint), with its CSRF token.
    browser = Client()
    sign_in(browser, alice)
    browser.get("/accounts/api-tokens/")  # sets the CSRF cookie
    csrf = browser.cookies["csrftoken"].value
    as_browser = {"X-CSRFToken": csrf}
    cookies = {"sessionid": browser.cookies["sessionid"].value, "csrftoken": csrf}

    schema = schemathesis.openapi.from_wsgi("/api/schema/", WSGIHandler())
    operations = [
        result.ok()
        for result in schema.get_all_operations()
        if result.ok().path.startswith(("/api/auth/", "/api/me/"))
    ]
    labels = {operation.label for operation in operations}
    assert {
        "GET /api/auth/tokens/",
        "POST /api/auth/tokens/",
        "DELETE /api/auth/tokens/",
        "DELETE /api/auth/tokens/{token_id}/",
        "POST /api/auth/tokens/current/",
        "GET /api/me/",
    } <= labels
    for operation in operations:
        _run(operation, as_browser, cookies)
        _run(operation, _as_script(alice))
        _run(operation, {})


def _as_script(user) -> dict[str, str]:
    _, token = AuthToken.objects.create(user)
    return {"Authorization": f"Token {token}"}


def _run(operation, headers: dict[str, str], cookies: dict[str, str] | None = None) -> None:
    @settings(
        max_examples=15,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def run(case) -> None:
        cache.clear()  # throttles
        if cookies:
            case.cookies = {**(case.cookies or {}), **cookies}
        case.call_and_validate(headers=headers, checks=CHECKS)

    run()
