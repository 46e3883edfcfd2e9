"""What differs between OpenAI's and Anthropic's APIs, and nothing else.

Each provider knows: where the agent's token is in a request, how to clamp and
read a request (model, max tokens, tools, streaming), how to find usage and
tool calls in a response or in a stream of server-sent events, and how an
error looks to its SDK. The proxy in ``gateway.proxy`` is the same for both.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from agents.models import AIProvider

# Per-message framing tokens the providers add on top of the text (generous).
MESSAGE_OVERHEAD_TOKENS = 8
REQUEST_OVERHEAD_TOKENS = 16


class BadRequest(Exception):
    """The request cannot be forwarded: its message is safe to show the client."""


@dataclass
class Usage:
    """Token counts as the provider reported them (input includes cached)."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    output_tokens: int = 0
    seen: bool = False  # whether the provider reported any usage at all

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class Call:
    """A request after validation and clamping, ready to forward."""

    model: str
    body: bytes
    stream: bool
    max_output_tokens: int
    input_upper_bound: int
    tool_names: list[str]
    client_wants_usage: bool = True

    @property
    def worst_case_tokens(self) -> int:
        return self.input_upper_bound + self.max_output_tokens


@dataclass
class StreamMeter:
    """Reads usage and tool calls out of SSE events as they pass."""

    provider: Provider
    usage: Usage = field(default_factory=Usage)
    tool_calls: int = 0
    tool_indexes: set[int] = field(default_factory=set)
    upstream_request_id: str = ""
    error: str = ""
    client_wants_usage: bool = True


def _input_upper_bound(payload: dict[str, Any], raw_size: int) -> int:
    # A token is never shorter than one byte of the UTF-8 text it encodes, so
    # the request's size bounds its text; framing adds a few tokens a message.
    messages = payload.get("messages") or []
    return raw_size + MESSAGE_OVERHEAD_TOKENS * len(messages) + REQUEST_OVERHEAD_TOKENS


def _require(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model or len(model) > 100:
        raise BadRequest("'model' must be a model name")
    if not isinstance(payload.get("messages"), list) or not payload["messages"]:
        raise BadRequest("'messages' must be a non-empty list")
    return model


def _positive_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"'{name}' must be a positive integer")
    return value


class Provider(ABC):
    """One provider's API; the proxy is the same for every provider."""

    name: str
    upstream_setting: str
    path: str

    @abstractmethod
    def token(self, headers: dict[str, str]) -> str: ...

    @abstractmethod
    def prepare(self, payload: dict[str, Any], *, raw_size: int, max_tokens_limit: int) -> Call: ...

    @abstractmethod
    def upstream_headers(self, provider_key: str, headers: dict[str, str]) -> dict[str, str]: ...

    @abstractmethod
    def response_usage(self, body: dict[str, Any]) -> tuple[Usage, int]: ...

    @abstractmethod
    def read_event(self, meter: StreamMeter, event: bytes) -> bool:
        """Meter one SSE event; returns False if it must not reach the client."""
        ...

    @abstractmethod
    def error_body(self, status: int, message: str) -> dict[str, Any]: ...

    @abstractmethod
    def stream_error_event(self, message: str) -> bytes: ...


def _event_data(event: bytes) -> bytes | None:
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


class OpenAI(Provider):
    name = AIProvider.OPENAI
    upstream_setting = "OPENAI_UPSTREAM_URL"
    path = "/chat/completions"

    def token(self, headers: dict[str, str]) -> str:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""

    def prepare(self, payload: dict[str, Any], *, raw_size: int, max_tokens_limit: int) -> Call:
        model = _require(payload)
        asked = [
            _positive_int(payload.get(key), key) for key in ("max_completion_tokens", "max_tokens")
        ]
        limit = min([a for a in asked if a] or [max_tokens_limit])
        limit = min(limit, max_tokens_limit)
        if payload.get("max_tokens") is not None:
            payload["max_tokens"] = limit
        if payload.get("max_completion_tokens") is not None or payload.get("max_tokens") is None:
            payload["max_completion_tokens"] = limit
        choices = _positive_int(payload.get("n"), "n") or 1
        stream = payload.get("stream") is True
        wants_usage = True
        if stream:
            options = payload.get("stream_options") or {}
            if not isinstance(options, dict):
                raise BadRequest("'stream_options' must be an object")
            wants_usage = options.get("include_usage") is True
            # Always ask for usage: it is how the call is metered.
            payload["stream_options"] = {**options, "include_usage": True}
        return Call(
            model=model,
            body=json.dumps(payload).encode(),
            stream=stream,
            max_output_tokens=limit * choices,
            input_upper_bound=_input_upper_bound(payload, raw_size),
            tool_names=_openai_tool_names(payload.get("tools")),
            client_wants_usage=wants_usage,
        )

    def upstream_headers(self, provider_key: str, headers: dict[str, str]) -> dict[str, str]:
        return {"authorization": f"Bearer {provider_key}", "content-type": "application/json"}

    def response_usage(self, body: dict[str, Any]) -> tuple[Usage, int]:
        tool_calls = sum(
            len((choice.get("message") or {}).get("tool_calls") or [])
            for choice in body.get("choices") or []
        )
        return _openai_usage(body.get("usage")), tool_calls

    def read_event(self, meter: StreamMeter, event: bytes) -> bool:
        data = _event_data(event)
        if data is None or data == b"[DONE]":
            return True
        chunk = json.loads(data)
        if chunk.get("usage"):
            meter.usage = _openai_usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            for call in (choice.get("delta") or {}).get("tool_calls") or []:
                meter.tool_indexes.add((choice.get("index", 0), call.get("index", 0)))
        meter.tool_calls = len(meter.tool_indexes)
        # The usage-only chunk we asked for on the client's behalf.
        usage_only = chunk.get("usage") and not chunk.get("choices")
        return not (usage_only and not meter.client_wants_usage)

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        kind = {
            400: "invalid_request_error",
            401: "invalid_request_error",
            402: "insufficient_quota",
            403: "permission_denied",
            404: "not_found_error",
            429: "rate_limit_exceeded",
        }.get(status, "api_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": kind}}

    def stream_error_event(self, message: str) -> bytes:
        return b"data: " + json.dumps(self.error_body(502, message)).encode() + b"\n\n"


def _openai_usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    details = raw.get("prompt_tokens_details") or {}
    return Usage(
        input_tokens=int(raw.get("prompt_tokens") or 0),
        cached_input_tokens=int(details.get("cached_tokens") or 0),
        output_tokens=int(raw.get("completion_tokens") or 0),
        seen=True,
    )


def _openai_tool_names(tools: Any) -> list[str]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest("'tools' must be a list")
    names = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest("each tool needs a function with a name")
        names.append(function["name"])
    return names


class Anthropic(Provider):
    name = AIProvider.ANTHROPIC
    upstream_setting = "ANTHROPIC_UPSTREAM_URL"
    path = "/v1/messages"
    forwarded_headers = ("anthropic-version", "anthropic-beta")

    def token(self, headers: dict[str, str]) -> str:
        if headers.get("x-api-key"):
            return headers["x-api-key"].strip()
        scheme, _, value = headers.get("authorization", "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""

    def prepare(self, payload: dict[str, Any], *, raw_size: int, max_tokens_limit: int) -> Call:
        model = _require(payload)
        asked = _positive_int(payload.get("max_tokens"), "max_tokens") or max_tokens_limit
        payload["max_tokens"] = min(asked, max_tokens_limit)
        tools = payload.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise BadRequest("'tools' must be a list")
        names = []
        for tool in tools or []:
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise BadRequest("each tool needs a name")
            names.append(tool["name"])
        return Call(
            model=model,
            body=json.dumps(payload).encode(),
            stream=payload.get("stream") is True,
            max_output_tokens=payload["max_tokens"],
            input_upper_bound=_input_upper_bound(payload, raw_size),
            tool_names=names,
        )

    def upstream_headers(self, provider_key: str, headers: dict[str, str]) -> dict[str, str]:
        forwarded = {k: headers[k] for k in self.forwarded_headers if k in headers}
        forwarded.setdefault("anthropic-version", "2023-06-01")
        return {"x-api-key": provider_key, "content-type": "application/json", **forwarded}

    def response_usage(self, body: dict[str, Any]) -> tuple[Usage, int]:
        tool_calls = sum(
            1
            for block in body.get("content") or []
            if isinstance(block, dict) and block.get("type") == "tool_use"
        )
        usage = Usage()
        _anthropic_usage(usage, body.get("usage"))
        return usage, tool_calls

    def read_event(self, meter: StreamMeter, event: bytes) -> bool:
        data = _event_data(event)
        if not data:
            return True
        message = json.loads(data)
        kind = message.get("type")
        if kind == "message_start":
            meter.upstream_request_id = (message.get("message") or {}).get("id", "")
            _anthropic_usage(meter.usage, (message.get("message") or {}).get("usage"))
        elif kind == "message_delta":
            # Cumulative counts: the latest value wins, never a sum.
            _anthropic_usage(meter.usage, message.get("usage"))
        elif kind == "content_block_start":
            if (message.get("content_block") or {}).get("type") == "tool_use":
                meter.tool_calls += 1
        elif kind == "error":
            meter.error = (message.get("error") or {}).get("message", "upstream error")
        return True

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            402: "billing_error",
            403: "permission_error",
            404: "not_found_error",
            413: "request_too_large",
            429: "rate_limit_error",
            504: "timeout_error",
            529: "overloaded_error",
        }.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def stream_error_event(self, message: str) -> bytes:
        return (
            b"event: error\ndata: " + json.dumps(self.error_body(502, message)).encode() + b"\n\n"
        )


def _anthropic_usage(usage: Usage, raw: Any) -> None:
    """Fold an Anthropic usage object into ``usage`` (fields present win)."""
    if not isinstance(raw, dict):
        return
    usage.seen = True
    plain = raw.get("input_tokens")
    read = raw.get("cache_read_input_tokens")
    created = raw.get("cache_creation_input_tokens")
    if read is not None:
        usage.cached_input_tokens = int(read)
    if created is not None:
        usage.cache_creation_input_tokens = int(created)
    if plain is not None:
        # Our input counts every prompt token; Anthropic's excludes the cache.
        usage.input_tokens = (
            int(plain) + usage.cached_input_tokens + usage.cache_creation_input_tokens
        )
    if raw.get("output_tokens") is not None:
        usage.output_tokens = int(raw["output_tokens"])


OPENAI = OpenAI()
ANTHROPIC = Anthropic()
