"""The OpenAPI schema at /api/schema/, and schemathesis against every operation in it.

Each operation gets a bounded run of generated requests per fixed seed, both
data that fits the schema and data that does not, from an authenticated user,
against the real WSGI app; the path's agent id is sometimes the user's own
agent, sometimes another user's, sometimes random. No answer may be a 5xx;
every answer must be a status the schema lists, in the documented shape; and
data that breaks the schema must be refused (issue 15: the schema says what the
API really does).
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.cache import cache
from django.core.handlers.wsgi import WSGIHandler
from hypothesis import HealthCheck, given, seed, settings
from hypothesis.errors import Unsatisfiable
from knox.models import AuthToken
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
    use_after_free,
)

from agents.services import create_agent

EXAMPLES_PER_OPERATION = 6  # per seed and mode: 3 seeds x 2 modes x 6 per operation
SEEDS = (15, 4242, 271828)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]


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


@pytest.mark.django_db
def test_the_schema_lists_what_the_api_really_answers(client):
    import re

    schema = client.get("/api/schema/", headers={"Accept": "application/json"}).json()
    paths = schema["paths"]
    # Every operation can meet the input boundary's 400; a body also its 415.
    assert "400" in paths["/api/agents/{agent_id}/logs"]["get"]["responses"]
    assert "415" in paths["/api/agents/"]["post"]["responses"]
    for path in ("/api/auth/tokens/", "/api/auth/tokens/current/"):
        for operation in paths[path].values():
            assert {"401", "403"} <= set(operation["responses"]), path
    # A cap below zero is refused by the API, so the schema does not offer one.
    cap = schema["components"]["schemas"]["NewAgent"]["properties"]["monthly_cost_cap"]
    assert re.fullmatch(cap["pattern"], "12.50")
    assert not re.fullmatch(cap["pattern"], "-5")


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
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        checks = [*CHECKS, response_schema_conformance]
        if mode is GenerationMode.NEGATIVE:
            checks.append(negative_data_rejection)
        for fixed in SEEDS:
            try:
                _run(operation, mode, fixed, headers, ids, checks)
            except Unsatisfiable:
                # Nothing to break: an operation without parameters or body.
                assert mode is GenerationMode.NEGATIVE
                break


def _run(operation, mode, fixed: int, headers, ids: list[str], checks) -> None:
    @seed(fixed)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        cache.clear()  # the per-user throttle would answer 429 to most of the run
        if _is_valid(case, ParameterLocation.PATH) and "agent_id" in (case.path_parameters or {}):
            generated = str(case.path_parameters["agent_id"])
            # Own agent, another user's, or the generated (unknown) id, in turn.
            choice = sum(map(ord, generated)) % 3
            if choice < len(ids):
                case.path_parameters["agent_id"] = ids[choice]
        case.call_and_validate(headers=headers, checks=checks)

    run()


def _is_valid(case, location: ParameterLocation) -> bool:
    """Whether that part of the case was generated valid (a negated one keeps what it
    has: a real agent id, say, would undo the negation)."""
    part = case.meta.components.get(location) if case.meta else None
    return part is None or part.mode is GenerationMode.POSITIVE


STATEFUL_SEEDS = (15, 4242)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fixed", STATEFUL_SEEDS)
def test_linked_operations_hold_together(alice, fixed):
    """Stateful: follow the schema's links (a created schedule is read, changed and
    deleted) with every check, on one of the user's agents."""
    own = create_agent(owner=alice, name="mine", provider_key="sk-test-provider-key")
    _, token = AuthToken.objects.create(alice)
    headers = {"Authorization": f"Token {token}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/", WSGIHandler())
    operations = [result.ok() for result in schema.get_all_operations()]
    created = [operation.definition.raw["responses"].get("201", {}) for operation in operations]
    links = {link for response in created for link in response.get("links", {})}
    assert {"GetSchedule", "ChangeSchedule", "DeleteSchedule", "GetAgent"} <= links
    # The schedules: they link (create, then read, change, delete) and touch no droplet.
    base = schema.include(path_regex=r"/schedules").as_state_machine()
    steps: list[tuple[str, int]] = []

    class Scenario(base):
        def before_call(self, case) -> None:
            cache.clear()  # the per-user throttle
            parameters = case.path_parameters or {}
            # A linked schedule's agent is already right; others get the user's agent.
            if _is_valid(case, ParameterLocation.PATH) and "schedule_id" not in parameters:
                parameters["agent_id"] = str(own.id)
            body = case.body if isinstance(case.body, dict) else {}
            if _is_valid(case, ParameterLocation.BODY) and "cron" in body:
                body["cron"] = "30 7 * * 1-5"  # random text is almost never a valid cron

        def after_call(self, response, case) -> None:
            steps.append((case.operation.label, response.status_code))

        def get_call_kwargs(self, case) -> dict:
            return {"headers": headers}

        def validate_response(self, response, case, additional_checks=None, **kwargs) -> None:
            checks = [*CHECKS, response_schema_conformance, use_after_free]
            case.validate_response(response, checks=checks, transport_kwargs=kwargs)

    seed(fixed)(Scenario)  # hypothesis reads the seed off the state machine class
    Scenario.run(
        settings=settings(
            max_examples=10,
            stateful_step_count=6,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    # The links were followed: a schedule was created, then reached through its link.
    assert ("POST /api/agents/{agent_id}/schedules", 201) in steps
    assert [label for label, status in steps if "{schedule_id}" in label and status < 300]
