"""The API's request parsers (its own module: DRF imports it while loading its views)."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.parsers import JSONParser

from safer_claw import boundary


class StrictJSONParser(JSONParser):
    """DRF's JSON parser with safer_claw.boundary's rules (depth, NUL, number range)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return boundary.loads(stream.read() if stream is not None else b"")
        except boundary.BadInput as exc:
            raise exceptions.ParseError(exc.message) from exc
