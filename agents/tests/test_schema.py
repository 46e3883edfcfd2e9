"""The OpenAPI schema at /api/schema/, and schemathesis against every operation in it.

Each operation gets a bounded, deterministic run of generated requests (valid
and invalid) from an authenticated user, against the real WSGI app; the path's
agent id is sometimes the user's own agent, sometimes another user's, sometimes
random. No answer may be a 5xx, and every answer of the agents API must match
the schema.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.cache import cache
from django.core.handlers.wsgi import WSGIHandler
from hypothesis import HealthCheck, given, settings
from knox.models import AuthToken
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agents.services import create_agent

EXAMPLES_PER_OPERATION = 40


@pytest.mark.django_db
def test_the_schema_documents_every_agent_endpoint(client):
    response = client.get("/api/schema/", headers={"Accept": "application/json"})
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in [
        "/api/agents/",
        "/api/agents/{agent_id}/",
        "/api/agents/{agent_id}/status",
        "/api/agents/{agent_id}/start",
        "/api/agents/{agent_id}/stop",
        "/api/agents/{agent_id}/logs",
        "/api/agents/{agent_id}/usage",
        "/api/agents/{agent_id}/kill-secret",
    ]:
        assert path in paths
    assert set(paths["/api/agents/{agent_id}/"]) == {"get", "delete"}
    assert client.get("/api/docs/").status_code == 200


# Transactional: each WSGI request ends with Django closing its database
# connection, which would abort a test wrapped in one transaction.
@pytest.mark.django_db(transaction=True)
def test_no_generated_request_gets_a_server_error(alice, bob):
    own = create_agent(owner=alice, name="mine", provider_key="sk-test-provider-key")
    others = create_agent(owner=bob, name="theirs")
    _, token = AuthToken.objects.create(alice)
    headers = {"Authorization": f"Token {token}"}
    # Agents without a container: the run exercises the API, not the droplets.
    ids = [str(own.id), str(others.id)]

    schema = schemathesis.openapi.from_wsgi("/api/schema/", WSGIHandler())
    failures = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    # DELETE last: until then the user's own agent answers the other operations.
    operations.sort(key=lambda operation: operation.method.upper() == "DELETE")
    assert len(operations) >= 10
    for operation in operations:
        try:
            _fuzz(operation, headers, ids)
        except Exception as exc:  # collect every operation's failure, then report them all
            failures[operation.label] = exc
    assert not failures, "\n\n".join(f"{label}: {exc}" for label, exc in failures.items())


def _fuzz(operation, headers: dict[str, str], ids: list[str]) -> None:
    checks = [not_a_server_error]
    if operation.path.startswith("/api/agents/"):
        # Ours also answer only what the schema documents, in the documented shape.
        checks += [status_code_conformance, content_type_conformance, response_schema_conformance]

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def run(case) -> None:
        cache.clear()  # the per-user throttle would answer 429 to most of the run
        if "agent_id" in (case.path_parameters or {}):
            generated = str(case.path_parameters["agent_id"])
            # Own agent, another user's, or the generated (unknown) id, in turn.
            choice = sum(map(ord, generated)) % 3
            if choice < len(ids):
                case.path_parameters["agent_id"] = ids[choice]
        case.call_and_validate(headers=headers, checks=checks)

    run()
