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
