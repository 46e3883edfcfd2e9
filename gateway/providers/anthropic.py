"""Anthropic Messages (``POST /v1/messages``): what is accepted, and how to read it.

Accepted body fields are those of ``BODY`` below; anything else is refused by name.
Refused on purpose: ``mcp_servers`` (the provider would connect anywhere for the
agent), ``container`` and ``context_management``, server-side and Anthropic-defined
tools (web search and fetch, code execution, computer use, bash, text editor,
memory: only custom tools), image, document and search-result blocks (URLs and
files the provider fetches or holds, costs the body does not show), and
``service_tier`` other than ``standard_only``, which is always sent (``auto`` may
bill the priority tier). ``anthropic-version`` is ours to set; ``anthropic-beta``
is refused unless every beta named is in ``BETAS``. Parallel tool use is always
disabled upstream, so an answer holds at most one tool call, which is reserved.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from agents.models import AIProvider
from gateway.providers.base import (
    Answer,
    BadRequest,
    Call,
    Provider,
    StreamMeter,
    Usage,
    anything,
    boolean,
    check_tool_use,
    either,
    event_data,
    input_upper_bound,
    list_of,
    nullable,
    number,
    obj,
    one_of,
    positive_int,
    split_tools,
    string,
    tagged,
)

API_VERSION = "2023-06-01"
# Betas that change neither what a call costs per token nor what it can reach:
# streamed tool input in finer pieces, thinking between tool calls, and the
# one-hour cache (priced on its own: ModelPrice.cache_write_1h_per_mtok). Never
# MCP (egress), files, code execution, computer use, or the 1M context (a
# long-context price tier).
BETAS = frozenset(
    {
        "fine-grained-tool-streaming-2025-05-14",
        "interleaved-thinking-2025-05-14",
        "extended-cache-ttl-2025-04-11",
    }
)

CACHE_CONTROL = nullable(
    obj({"type": one_of("ephemeral"), "ttl": one_of("5m", "1h")}, required=("type",))
)
TEXT_BLOCK = obj(
    {
        "type": string,
        "text": string,
        "cache_control": CACHE_CONTROL,
        "citations": nullable(list_of(anything)),
    },
    required=("text",),
)
TOOL_USE_BLOCK = obj(
    {
        "type": string,
        "id": string,
        "name": string,
        "input": anything,
        "cache_control": CACHE_CONTROL,
    },
    required=("id", "name", "input"),
)
TOOL_RESULT_BLOCK = obj(
    {
        "type": string,
        "tool_use_id": string,
        "content": either(string, list_of(tagged("type", {"text": TEXT_BLOCK}))),
        "is_error": boolean,
        "cache_control": CACHE_CONTROL,
    },
    required=("tool_use_id",),
)
THINKING_BLOCK = obj({"type": string, "thinking": string, "signature": string})
REDACTED_THINKING_BLOCK = obj({"type": string, "data": string})
MESSAGE = tagged(
    "role",
    {
        "user": obj(
            {
                "role": string,
                "content": either(
                    string,
                    list_of(tagged("type", {"text": TEXT_BLOCK, "tool_result": TOOL_RESULT_BLOCK})),
                ),
            },
            required=("content",),
        ),
        "assistant": obj(
            {
                "role": string,
                "content": either(
                    string,
                    list_of(
                        tagged(
                            "type",
                            {
                                "text": TEXT_BLOCK,
                                "tool_use": TOOL_USE_BLOCK,
                                "thinking": THINKING_BLOCK,
                                "redacted_thinking": REDACTED_THINKING_BLOCK,
                            },
                        )
                    ),
                ),
            },
            required=("content",),
        ),
    },
)
# Custom tools only: a "type" other than "custom" names a server-side or
# Anthropic-defined tool.
TOOL = obj(
    {
        "type": one_of("custom"),
        "name": string,
        "description": string,
        "input_schema": anything,
        "cache_control": CACHE_CONTROL,
    },
    required=("name", "input_schema"),
)
PARALLEL = {"type": string, "disable_parallel_tool_use": boolean}
TOOL_CHOICE = tagged(
    "type",
    {
        "auto": obj(PARALLEL),
        "any": obj(PARALLEL),
        "tool": obj({**PARALLEL, "name": string}, required=("name",)),
        "none": obj({"type": string}),
    },
)

# The endpoint's allow-list: every body field accepted, and how it is checked.
BODY = obj(
    {
        "model": string,
        "messages": list_of(MESSAGE, non_empty=True),
        "max_tokens": positive_int,
        "system": either(string, list_of(tagged("type", {"text": TEXT_BLOCK}))),
        "metadata": obj({"user_id": nullable(string)}),
        "stop_sequences": list_of(string),
        "stream": boolean,
        "temperature": number,
        "top_k": positive_int,
        "top_p": number,
        "tools": list_of(TOOL),
        "tool_choice": TOOL_CHOICE,
        "thinking": tagged(
            "type",
            {
                "enabled": obj(
                    {"type": string, "budget_tokens": positive_int}, required=("budget_tokens",)
                ),
                "disabled": obj({"type": string}),
            },
        ),
        "service_tier": one_of("standard_only"),
    },
    required=("model", "messages"),
)


class Anthropic(Provider):
    name = AIProvider.ANTHROPIC
    upstream_setting = "ANTHROPIC_UPSTREAM_URL"
    path = "/v1/messages"
    body = staticmethod(BODY)

    def token(self, headers: dict[str, str]) -> str:
        if headers.get("x-api-key"):
            return headers["x-api-key"].strip()
        scheme, _, value = headers.get("authorization", "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""

    def check_headers(self, headers: dict[str, str]) -> dict[str, str]:
        betas = [b.strip() for b in headers.get("anthropic-beta", "").split(",") if b.strip()]
        for beta in betas:
            if beta not in BETAS:
                raise BadRequest(
                    f"anthropic-beta '{beta[:60]}' is not accepted by this gateway.",
                    param="anthropic-beta",
                )
        return {"anthropic-beta": ",".join(sorted(set(betas)))} if betas else {}

    def prepare(
        self, payload: dict[str, Any], *, raw_size: int, max_tokens: int, allowed: frozenset[str]
    ) -> Call:
        self.body(payload, "")
        if len(payload["model"]) > 100:
            raise BadRequest("'model' must be a model name.", param="model")
        payload["max_tokens"] = min(payload.get("max_tokens") or max_tokens, max_tokens)
        payload["service_tier"] = "standard_only"
        offered, dropped = self._filter_tools(payload, allowed)
        return Call(
            model=payload["model"],
            payload=payload,
            stream=payload.get("stream") is True,
            max_output_tokens=payload["max_tokens"],
            input_upper_bound=input_upper_bound(payload, raw_size),
            offered_tools=offered,
            dropped_tools=dropped,
            long_cache=_asks_long_cache(payload),
        )

    def _filter_tools(
        self, payload: dict[str, Any], allowed: frozenset[str]
    ) -> tuple[frozenset[str], list[str]]:
        tools = payload.get("tools") or []
        offered, dropped = split_tools([tool["name"] for tool in tools], allowed)
        choice = payload.get("tool_choice") or {"type": "auto"}
        if choice["type"] == "tool" and choice["name"] not in offered:
            raise BadRequest(
                f"'tool_choice' names '{choice['name']}', which is not on this agent's allow-list.",
                param="tool_choice.name",
            )
        kept = [tool for tool in tools if tool["name"] in offered]
        if kept and choice["type"] != "none":
            payload["tools"] = kept
            payload["tool_choice"] = {**choice, "disable_parallel_tool_use": True}
        else:
            payload.pop("tools", None)
            payload.pop("tool_choice", None)
            offered = frozenset()
        return offered, dropped

    def upstream_headers(self, provider_key: str) -> dict[str, str]:
        return {
            "x-api-key": provider_key,
            "content-type": "application/json",
            "anthropic-version": API_VERSION,
        }

    def read_answer(self, body: dict[str, Any], call: Call) -> Answer:
        answer = Answer()
        _fold_usage(answer.usage, body.get("usage"))
        answer.usage.final = answer.usage.final and body.get("stop_reason") is not None
        for block in body.get("content") or []:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind not in ("text", "thinking", "redacted_thinking"):
                check_tool_use(answer, call, str(kind), block.get("name") if kind else None)
        return answer

    def read_event(self, meter: StreamMeter, event: bytes) -> bool:
        data = event_data(event)
        if not data:
            return True
        message = orjson.loads(data)
        kind = message.get("type")
        usage = meter.answer.usage
        if kind == "message_start":
            meter.upstream_request_id = (message.get("message") or {}).get("id", "")
            _fold_usage(usage, (message.get("message") or {}).get("usage"))
            usage.final = False  # only message_delta closes the count
        elif kind == "message_delta":
            # Cumulative counts: the latest value wins, never a sum.
            _fold_usage(usage, message.get("usage"))
        elif kind == "message_stop":
            meter.ended = True
        elif kind == "content_block_start":
            block = message.get("content_block") or {}
            block_kind = block.get("type")
            if block_kind not in ("text", "thinking", "redacted_thinking"):
                check_tool_use(meter.answer, meter.call, str(block_kind), block.get("name"))
        elif kind == "error":
            meter.error = (message.get("error") or {}).get("message", "upstream error")
        return True

    def error_body(self, status: int, message: str, param: str | None = None) -> dict[str, Any]:
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


def _asks_long_cache(payload: dict[str, Any]) -> bool:
    def blocks() -> Any:
        yield from payload.get("tools") or []
        system = payload.get("system")
        if isinstance(system, list):
            yield from system
        for message in payload["messages"]:
            if isinstance(message["content"], list):
                yield from message["content"]

    return any(
        isinstance(block.get("cache_control"), dict) and block["cache_control"].get("ttl") == "1h"
        for block in blocks()
    )


def _fold_usage(usage: Usage, raw: Any) -> None:
    """Fold an Anthropic usage object into ``usage`` (fields present win)."""
    if not isinstance(raw, dict):
        return
    usage.final = True
    plain = raw.get("input_tokens")
    read = raw.get("cache_read_input_tokens")
    created = raw.get("cache_creation_input_tokens")
    if read is not None:
        usage.cached_input_tokens = int(read)
    if created is not None:
        usage.cache_creation_input_tokens = int(created)
    by_ttl = raw.get("cache_creation")
    if isinstance(by_ttl, dict):
        usage.cache_write_1h_tokens = int(by_ttl.get("ephemeral_1h_input_tokens") or 0)
    if plain is not None:
        # Our input counts every prompt token; Anthropic's excludes the cache.
        usage.input_tokens = (
            int(plain) + usage.cached_input_tokens + usage.cache_creation_input_tokens
        )
    if raw.get("output_tokens") is not None:
        usage.output_tokens = int(raw["output_tokens"])
