"""What every provider shares: the call after checking, usage, and the allow-list checks.

A provider module (``openai.py``, ``anthropic.py``) writes down, as data, the body
fields its endpoint accepts and the values it accepts where a value changes the
price or the reach of a call (a service tier, a server-side tool, an image URL
the provider would fetch). Anything else is refused with ``BadRequest`` naming
the field. The checks here are the small vocabulary those lists are written in.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from agents.tools import function_name

# Per-message framing tokens the providers add on top of the text (generous).
MESSAGE_OVERHEAD_TOKENS = 8
REQUEST_OVERHEAD_TOKENS = 16


class BadRequest(Exception):
    """The request cannot be forwarded: its message is safe to show the client."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def tool_key(name: str) -> str:
    """The one spelling of a tool name: OpenAI's and Anthropic's names allow no
    dots, so ``calendar.list_events`` is offered as ``calendar__list_events``
    (the runtime's spelling, from the same function)."""
    return function_name(name)


@dataclass
class Usage:
    """Token counts as the provider reported them (input includes cached and cache writes)."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_write_1h_tokens: int = 0  # of cache_creation_input_tokens, those kept an hour
    output_tokens: int = 0
    final: bool = False  # the provider's own closing usage was seen

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class Call:
    """A request after checking, tool filtering and clamping, ready to forward."""

    model: str
    payload: dict[str, Any]
    stream: bool
    max_output_tokens: int
    input_upper_bound: int
    offered_tools: frozenset[str] = frozenset()  # names exactly as the model sees them
    dropped_tools: list[str] = field(default_factory=list)
    client_wants_usage: bool = True
    long_cache: bool = False  # a one-hour cache write was asked for

    @property
    def worst_case_tokens(self) -> int:
        return self.input_upper_bound + self.max_output_tokens

    @property
    def reserved_tool_calls(self) -> int:
        # Parallel tool use is switched off upstream, so one answer holds at most one.
        return 1 if self.offered_tools else 0

    @property
    def body(self) -> bytes:
        return orjson.dumps(self.payload)


@dataclass
class Answer:
    """What a response asked for: tool names, and why it is refused if it is."""

    usage: Usage = field(default_factory=Usage)
    tool_names: list[str] = field(default_factory=list)  # every tool-use block, of any kind
    delivered_tool_calls: int = 0  # those passed to the client (before any refusal)
    refused: str = ""  # the reason the rest of the answer must not reach the client


@dataclass
class StreamMeter:
    """Reads usage and tool calls out of SSE events as they pass."""

    call: Call
    answer: Answer = field(default_factory=Answer)
    open_tools: set[tuple[int, int]] = field(default_factory=set)
    upstream_request_id: str = ""
    error: str = ""  # the stream broke; the client is told
    ended: bool = False  # the provider's end-of-stream marker arrived


def check_tool_use(answer: Answer, call: Call, kind: str, name: Any) -> None:
    """Count one tool-use block of any kind; refuse it if it was not offered or one too many."""
    label = name if isinstance(name, str) else "?"
    answer.tool_names.append(label if kind in ("function", "tool_use") else f"{kind}:{label}")
    if answer.refused:
        return
    if kind not in ("function", "tool_use") or label not in call.offered_tools:
        answer.refused = f"The model asked for tool '{label}' ({kind}), which was not offered."
    elif len(answer.tool_names) > call.reserved_tool_calls:
        answer.refused = "The model asked for more tool calls at once than one."
    else:
        answer.delivered_tool_calls += 1


def input_upper_bound(payload: dict[str, Any], raw_size: int) -> int:
    # A token is never shorter than one byte of the UTF-8 text it encodes, and
    # only text is accepted (no image, audio or file parts), so the request's
    # size bounds its input; framing adds a few tokens a message.
    messages = payload.get("messages") or []
    return raw_size + MESSAGE_OVERHEAD_TOKENS * len(messages) + REQUEST_OVERHEAD_TOKENS


# --- the allow-list vocabulary ---------------------------------------------------------

Check = Callable[[Any, str], None]


def anything(value: Any, path: str) -> None:
    """Free-form JSON the provider reads as data (a JSON Schema, tool arguments)."""


def string(value: Any, path: str) -> None:
    if not isinstance(value, str):
        raise BadRequest(f"'{path}' must be a string.", param=path)


def boolean(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        raise BadRequest(f"'{path}' must be true or false.", param=path)


def number(value: Any, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"'{path}' must be a number.", param=path)


def integer(value: Any, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{path}' must be an integer.", param=path)


def positive_int(value: Any, path: str) -> None:
    integer(value, path)
    if value < 1:
        raise BadRequest(f"'{path}' must be a positive integer.", param=path)


def nullable(check: Check) -> Check:
    def nullable_check(value: Any, path: str) -> None:
        if value is not None:
            check(value, path)

    return nullable_check


def one_of(*values: Any) -> Check:
    """A value that changes price or reach: only these are accepted."""

    def one_of_check(value: Any, path: str) -> None:
        if not any(type(value) is type(v) and value == v for v in values):
            accepted = ", ".join(json.dumps(v) for v in values)
            raise BadRequest(
                f"'{path}' may only be {accepted} through this gateway; "
                f"{json.dumps(value)[:60]} is refused.",
                param=path,
            )

    return one_of_check


def either(*checks: Check) -> Check:
    """The first check that accepts; else the last one's refusal."""

    def either_check(value: Any, path: str) -> None:
        for check in checks[:-1]:
            try:
                check(value, path)
                return
            except BadRequest:
                continue
        checks[-1](value, path)

    return either_check


def list_of(check: Check, *, non_empty: bool = False) -> Check:
    def list_check(value: Any, path: str) -> None:
        if not isinstance(value, list) or (non_empty and not value):
            raise BadRequest(
                f"'{path}' must be a {'non-empty ' if non_empty else ''}list.", param=path
            )
        for index, item in enumerate(value):
            check(item, f"{path}[{index}]")

    return list_check


def mapping_of(check: Check) -> Check:
    def mapping_check(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise BadRequest(f"'{path}' must be an object.", param=path)
        for key, item in value.items():
            check(item, f"{path}.{key}")

    return mapping_check


def obj(fields: dict[str, Check], *, required: tuple[str, ...] = ()) -> Check:
    """An object with only these keys (an allow-list), each checked."""

    def obj_check(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise BadRequest(f"'{path}' must be an object.", param=path)
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            check = fields.get(key)
            if check is None:
                raise BadRequest(f"'{where}' is not accepted by this gateway.", param=where)
            check(item, where)
        for key in required:
            if key not in value:
                where = f"{path}.{key}" if path else key
                raise BadRequest(f"'{where}' is required.", param=where)

    return obj_check


def tagged(tag: str, variants: dict[str, Check]) -> Check:
    """An object whose ``tag`` key picks its shape; other tags are refused by name."""

    def tagged_check(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise BadRequest(f"'{path}' must be an object.", param=path)
        kind = value.get(tag)
        check = variants.get(kind) if isinstance(kind, str) else None
        if check is None:
            where = f"{path}.{tag}"
            raise BadRequest(
                f"'{where}' {json.dumps(kind)[:60]} is not accepted by this gateway "
                f"(accepted: {', '.join(variants)}).",
                param=where,
            )
        check(value, path)

    return tagged_check


class Provider(ABC):
    """One provider's API; the proxy is the same for every provider."""

    name: str
    upstream_setting: str
    path: str
    body: Check  # the endpoint's allow-list of body fields

    @abstractmethod
    def token(self, headers: dict[str, str]) -> str: ...

    def check_headers(self, headers: dict[str, str]) -> dict[str, str]:
        """Refuse client headers that would change what the provider does; the
        few accepted ones, as they are to be sent upstream."""
        return {}

    @abstractmethod
    def prepare(
        self, payload: dict[str, Any], *, raw_size: int, max_tokens: int, allowed: frozenset[str]
    ) -> Call:
        """Check ``payload`` against the allow-list, drop tools not in ``allowed``
        (tool_key spellings), clamp the output, switch parallel tool use off."""

    @abstractmethod
    def upstream_headers(self, provider_key: str) -> dict[str, str]:
        """The only headers sent upstream: set here, none copied from the client."""

    @abstractmethod
    def read_answer(self, body: dict[str, Any], call: Call) -> Answer: ...

    @abstractmethod
    def read_event(self, meter: StreamMeter, event: bytes) -> bool:
        """Meter one SSE event; returns False if it must not reach the client."""

    @abstractmethod
    def error_body(self, status: int, message: str, param: str | None = None) -> dict[str, Any]: ...

    @abstractmethod
    def stream_error_event(self, message: str) -> bytes: ...


def event_data(event: bytes) -> bytes | None:
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


def split_tools(names: list[str], allowed: frozenset[str]) -> tuple[frozenset[str], list[str]]:
    """The tool names kept (on the allow-list, in either spelling) and those dropped."""
    kept = frozenset(name for name in names if tool_key(name) in allowed)
    return kept, [name for name in names if name not in kept]
