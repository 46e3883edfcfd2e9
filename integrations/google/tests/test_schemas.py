"""The tools' argument schemas are strict: checked here with jsonschema, as the
tool endpoint checks every call before a tool runs."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator

from agents.tools import registered_tool
from integrations.google.tools import TOOLS

VALID: dict[str, list[dict[str, Any]]] = {
    "calendar.list_events": [
        {},
        {"time_min": "2026-11-28T00:00:00Z", "time_max": "2026-11-29T00:00:00+01:00"},
        {"time_min": "2026-11-28T08:30:00.123-05:00", "max_results": 50},
    ],
    "gmail.search": [
        {"query": "is:unread newer_than:1d"},
        {"query": "from:anna", "max_results": 25},
    ],
    "gmail.get_message": [{"id": "18c2f0a9b7e4d123"}],
    "drive.search": [{"query": "budget 2026"}, {"query": "O'Brien", "max_results": 1}],
    "drive.get_file": [{"id": "1AbC-dEf_GhIjKlMnOpQrStUvWxYz0123456789"}],
}

INVALID: dict[str, list[dict[str, Any]]] = {
    "calendar.list_events": [
        {"time_min": "tomorrow"},
        {"time_min": "2026-11-28"},  # a date-time with its offset is required
        {"time_min": "2026-11-28T00:00:00"},
        {"time_min": "2026-11-28T00:00:00Z\n"},
        {"max_results": 0},
        {"max_results": 51},
        {"max_results": "10"},
        {"max_results": True},
        {"calendar_id": "someone-else@example.com"},  # no other calendar, no extra keys
    ],
    "gmail.search": [
        {},
        {"query": ""},
        {"query": "x" * 501},
        {"query": "is:unread\r\nBcc: mallory@example.com"},
        {"query": "is:unread\n"},
        {"query": 42},
        {"query": "x", "max_results": 26},
        {"query": "x", "send_to": "mallory@example.com"},
    ],
    "gmail.get_message": [
        {},
        {"id": ""},
        {"id": "../../users/other/messages/1"},
        {"id": "abc\n"},
        {"id": "a" * 129},
        {"id": "abc", "format": "raw"},
    ],
    "drive.search": [
        {"query": ""},
        {"query": "x" * 201},
        {"query": "x\x00y"},
        {"query": "x", "max_results": -1},
        {"query": "x", "corpora": "allDrives"},
    ],
    "drive.get_file": [
        {"id": "abc/../def"},
        {"id": "abc?alt=media"},
        {"id": 123},
        {"id": "abc", "max_chars": 10**9},
    ],
}


@pytest.mark.parametrize("tool", TOOLS, ids=lambda tool: tool.name)
def test_each_schema_is_valid_and_closed(tool):
    schema = tool.parameters
    Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    for name, spec in schema["properties"].items():
        assert spec["type"] in {"string", "integer"}, name
        assert spec.get("description"), name
        if spec["type"] == "string":
            assert "pattern" in spec, name
            assert "maxLength" in spec or "{1,128}" in spec["pattern"], name
        else:
            assert {"minimum", "maximum"} <= spec.keys(), name


@pytest.mark.parametrize(
    ("name", "arguments"), [(n, a) for n, cases in VALID.items() for a in cases]
)
def test_schema_accepts(name, arguments):
    assert list(Draft202012Validator(registered_tool(name).parameters).iter_errors(arguments)) == []


@pytest.mark.parametrize(
    ("name", "arguments"), [(n, a) for n, cases in INVALID.items() for a in cases]
)
def test_schema_refuses(name, arguments):
    assert list(Draft202012Validator(registered_tool(name).parameters).iter_errors(arguments))
