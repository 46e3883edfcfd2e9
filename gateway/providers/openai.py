"""OpenAI Chat Completions (``POST /v1/chat/completions``): what is accepted, and how to read it.

Accepted body fields are those of ``BODY`` below; anything else is refused by name.
Refused on purpose: the legacy ``functions``/``function_call`` (one tool path, the
allow-listed one), ``audio`` and audio output, ``web_search_options`` (the provider
would fetch pages for the agent), ``prediction``, ``n`` other than 1, ``store: true``,
``service_tier`` other than ``auto``/``default`` (flex and priority are priced
differently), and message parts other than text (image URLs and files the provider
fetches or holds, audio priced by duration). ``parallel_tool_calls`` is always
false upstream, so an answer holds at most one tool call, which is reserved.
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
    integer,
    list_of,
    mapping_of,
    nullable,
    number,
    obj,
    one_of,
    positive_int,
    split_tools,
    string,
    tagged,
)

TEXT_PART = obj({"type": one_of("text"), "text": string}, required=("type", "text"))
REFUSAL_PART = obj({"type": one_of("refusal"), "refusal": string}, required=("type", "refusal"))
TEXT = either(string, list_of(tagged("type", {"text": TEXT_PART})))
ASSISTANT_TEXT = nullable(
    either(string, list_of(tagged("type", {"text": TEXT_PART, "refusal": REFUSAL_PART})))
)
FUNCTION_CALL = obj(
    {
        "id": string,
        "type": one_of("function"),
        "function": obj({"name": string, "arguments": string}, required=("name", "arguments")),
    },
    required=("id", "type", "function"),
)
MESSAGE = tagged(
    "role",
    {
        "system": obj({"role": string, "content": TEXT, "name": string}, required=("content",)),
        "developer": obj({"role": string, "content": TEXT, "name": string}, required=("content",)),
        "user": obj({"role": string, "content": TEXT, "name": string}, required=("content",)),
        "assistant": obj(
            {
                "role": string,
                "content": ASSISTANT_TEXT,
                "name": string,
                "refusal": nullable(string),
                "tool_calls": list_of(FUNCTION_CALL),
            }
        ),
        "tool": obj(
            {"role": string, "content": TEXT, "tool_call_id": string},
            required=("content", "tool_call_id"),
        ),
    },
)
TOOL = obj(
    {
        "type": one_of("function"),
        "function": obj(
            {
                "name": string,
                "description": string,
                "parameters": anything,
                "strict": nullable(boolean),
            },
            required=("name",),
        ),
    },
    required=("type", "function"),
)
TOOL_CHOICE = either(
    one_of("none", "auto", "required"),
    obj(
        {"type": one_of("function"), "function": obj({"name": string}, required=("name",))},
        required=("type", "function"),
    ),
)
RESPONSE_FORMAT = tagged(
    "type",
    {
        "text": obj({"type": string}),
        "json_object": obj({"type": string}),
        "json_schema": obj({"type": string, "json_schema": anything}, required=("json_schema",)),
    },
)
NUMBER = nullable(number)

# The endpoint's allow-list: every body field accepted, and how it is checked.
BODY = obj(
    {
        "model": string,
        "messages": list_of(MESSAGE, non_empty=True),
        "max_tokens": nullable(positive_int),
        "max_completion_tokens": nullable(positive_int),
        "temperature": NUMBER,
        "top_p": NUMBER,
        "presence_penalty": NUMBER,
        "frequency_penalty": NUMBER,
        "stop": nullable(either(string, list_of(string))),
        "seed": nullable(integer),
        "logit_bias": nullable(mapping_of(number)),
        "logprobs": nullable(boolean),
        "top_logprobs": nullable(integer),
        "user": string,
        "safety_identifier": string,
        "prompt_cache_key": string,
        "metadata": nullable(mapping_of(string)),
        "response_format": RESPONSE_FORMAT,
        "tools": list_of(TOOL),
        "tool_choice": TOOL_CHOICE,
        "parallel_tool_calls": boolean,
        "stream": nullable(boolean),
        "stream_options": nullable(obj({"include_usage": boolean, "include_obfuscation": boolean})),
        "n": nullable(one_of(1)),
        "modalities": nullable(list_of(one_of("text"))),
        "reasoning_effort": nullable(one_of("none", "minimal", "low", "medium", "high")),
        "verbosity": nullable(one_of("low", "medium", "high")),
        "service_tier": nullable(one_of("auto", "default")),
        "store": nullable(one_of(False)),
    },
    required=("model", "messages"),
)


class OpenAI(Provider):
    name = AIProvider.OPENAI
    upstream_setting = "OPENAI_UPSTREAM_URL"
    path = "/chat/completions"
    body = staticmethod(BODY)

    def token(self, headers: dict[str, str]) -> str:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""

    def prepare(
        self, payload: dict[str, Any], *, raw_size: int, max_tokens: int, allowed: frozenset[str]
    ) -> Call:
        self.body(payload, "")
        if len(payload["model"]) > 100:
            raise BadRequest("'model' must be a model name.", param="model")
        asked = [payload.get(key) for key in ("max_completion_tokens", "max_tokens")]
        limit = min([a for a in asked if a] + [max_tokens])
        payload.pop("max_tokens", None)  # one field, the one every current model takes
        payload["max_completion_tokens"] = limit
        # Standard tier, said out loud: "auto" could pick a tier priced otherwise.
        payload["service_tier"] = "default"
        offered, dropped = self._filter_tools(payload, allowed)
        stream = payload.get("stream") is True
        wants_usage = True
        if stream:
            options = payload.get("stream_options") or {}
            wants_usage = options.get("include_usage") is True
            # Always ask for usage: it is how the call is metered.
            payload["stream_options"] = {**options, "include_usage": True}
        return Call(
            model=payload["model"],
            payload=payload,
            stream=stream,
            max_output_tokens=limit,
            input_upper_bound=input_upper_bound(payload, raw_size),
            offered_tools=offered,
            dropped_tools=dropped,
            client_wants_usage=wants_usage,
        )

    def _filter_tools(
        self, payload: dict[str, Any], allowed: frozenset[str]
    ) -> tuple[frozenset[str], list[str]]:
        tools = payload.get("tools") or []
        offered, dropped = split_tools([tool["function"]["name"] for tool in tools], allowed)
        choice = payload.get("tool_choice")
        if isinstance(choice, dict) and choice["function"]["name"] not in offered:
            name = choice["function"]["name"]
            raise BadRequest(
                f"'tool_choice' names '{name}', which is not on this agent's allow-list.",
                param="tool_choice.function.name",
            )
        kept = [tool for tool in tools if tool["function"]["name"] in offered]
        if kept and choice != "none":
            payload["tools"] = kept
            payload["parallel_tool_calls"] = False
        else:
            for key in ("tools", "tool_choice", "parallel_tool_calls"):
                payload.pop(key, None)
            offered = frozenset()
        return offered, dropped

    def upstream_headers(self, provider_key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {provider_key}", "content-type": "application/json"}

    def read_answer(self, body: dict[str, Any], call: Call) -> Answer:
        answer = Answer(usage=_usage(body.get("usage")))
        for choice in body.get("choices") or []:
            message = choice.get("message") or {}
            for tool_call in message.get("tool_calls") or []:
                kind = tool_call.get("type", "function")
                name = (tool_call.get(kind) or {}).get("name")
                check_tool_use(answer, call, kind, name)
            if message.get("function_call"):
                check_tool_use(answer, call, "function_call", message["function_call"].get("name"))
        return answer

    def read_event(self, meter: StreamMeter, event: bytes) -> bool:
        data = event_data(event)
        if data is None:
            return True
        if data == b"[DONE]":
            meter.ended = True
            return True
        chunk = orjson.loads(data)
        if chunk.get("usage"):
            meter.answer.usage = _usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            for tool_call in delta.get("tool_calls") or []:
                key = (choice.get("index", 0), tool_call.get("index", 0))
                kind = tool_call.get("type") or "function"
                name = (tool_call.get(kind) or {}).get("name")
                if key not in meter.open_tools:
                    meter.open_tools.add(key)
                    check_tool_use(meter.answer, meter.call, kind, name)
                elif name is not None:  # a name changed mid-call: not what was checked
                    meter.answer.refused = "The model renamed a tool call while streaming it."
            if delta.get("function_call"):
                name = delta["function_call"].get("name")
                check_tool_use(meter.answer, meter.call, "function_call", name)
        # The usage-only chunk we asked for on the client's behalf.
        usage_only = chunk.get("usage") and not chunk.get("choices")
        return not (usage_only and not meter.call.client_wants_usage)

    def error_body(self, status: int, message: str, param: str | None = None) -> dict[str, Any]:
        kind = {
            400: "invalid_request_error",
            401: "invalid_request_error",
            402: "insufficient_quota",
            403: "permission_denied",
            404: "not_found_error",
            429: "rate_limit_exceeded",
        }.get(status, "api_error")
        return {"error": {"message": message, "type": kind, "param": param, "code": kind}}

    def stream_error_event(self, message: str) -> bytes:
        return b"data: " + json.dumps(self.error_body(502, message)).encode() + b"\n\n"


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    details = raw.get("prompt_tokens_details") or {}
    return Usage(
        input_tokens=int(raw.get("prompt_tokens") or 0),
        cached_input_tokens=int(details.get("cached_tokens") or 0),
        output_tokens=int(raw.get("completion_tokens") or 0),
        final=True,
    )
