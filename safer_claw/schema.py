"""Making the OpenAPI schema say what the API really does (drf-spectacular hooks).

Imported by the app config, so the extension is registered before a schema is built.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from rest_framework import serializers


class NonNegativeDecimalExtension(OpenApiSerializerFieldExtension):
    """A decimal string that may not be negative (``min_value >= 0``) has a pattern
    without the minus sign: drf-spectacular writes ``^-?`` whatever the bound, so the
    schema offered -5 for a cap the API refuses."""

    target_class = serializers.DecimalField
    match_subclasses = True

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        schema = auto_schema._map_serializer_field(self.target, direction, bypass_extensions=True)
        minimum = self.target.min_value
        if minimum is not None and minimum >= 0 and "pattern" in schema:
            schema["pattern"] = schema["pattern"].replace("^-?", "^", 1)
        return schema


ERROR_REF = {"$ref": "#/components/schemas/Error"}
# Statuses any operation can answer before its view runs: the input boundary
# (safer_claw.boundary) refuses a bad path, query or header with 400, and a body
# DRF cannot parse (or whose content type it does not take) is 400 or 415.
BOUNDARY = {"400": "Malformed request (path, query, headers or body)."}
WITH_BODY = {"415": "The body's content type is not accepted."}


def _link(operation_id: str, **parameters: str) -> dict[str, Any]:
    return {"operationId": operation_id, "parameters": parameters}


AGENT_FROM_BODY = {"agent_id": "$response.body#/id"}
SCHEDULE_FROM_BODY = {"agent_id": "$request.path.agent_id", "schedule_id": "$response.body#/id"}
# What a created resource leads to (OpenAPI links): readers see the flow, and
# stateful fuzzing follows it (create, then read, change, delete what was made).
LINKS = {
    ("/api/agents/", "post"): {
        "GetAgent": _link("agents_retrieve", **AGENT_FROM_BODY),
        "GetStatus": _link("agents_status_retrieve", **AGENT_FROM_BODY),
        "GetMessages": _link("agents_messages_retrieve", **AGENT_FROM_BODY),
        "DeleteAgent": _link("agents_destroy", **AGENT_FROM_BODY),
    },
    ("/api/agents/{agent_id}/schedules", "post"): {
        "GetSchedule": _link("agents_schedules_retrieve", **SCHEDULE_FROM_BODY),
        "ChangeSchedule": _link("agents_schedules_partial_update", **SCHEDULE_FROM_BODY),
        "DeleteSchedule": _link("agents_schedules_destroy", **SCHEDULE_FROM_BODY),
    },
}


def link_created_resources(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """POSTPROCESSING_HOOKS entry: OpenAPI links from a 201 to what it created."""
    for (path, method), links in LINKS.items():
        created = result["paths"].get(path, {}).get(method, {}).get("responses", {}).get("201")
        if created is not None:
            created["links"] = links
    return result


def document_boundary_statuses(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """POSTPROCESSING_HOOKS entry: add the boundary's statuses to every operation."""
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            extra = {**BOUNDARY, **(WITH_BODY if "requestBody" in operation else {})}
            responses = operation.setdefault("responses", {})
            for status, description in extra.items():
                responses.setdefault(
                    status,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": ERROR_REF}},
                    },
                )
    return result
