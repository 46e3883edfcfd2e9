"""A stand-in for OpenAI's and Anthropic's model APIs, in their real wire formats.

Not part of the gateway: what answers in a provider's place where none can be
reached. ``./dev demo``'s model (``safer_claw/demo_model.py``) and the benchmarks'
upstream (``benchmarks/upstream_standin.py``) serve :func:`asgi_app`; the tests'
fake providers (``gateway/tests/fake_providers.py``) serve the same bytes from a
threaded server that tests script reply by reply.

- ``POST {base}/v1/chat/completions``: OpenAI Chat Completions;
- ``POST {base}/v1/messages``: Anthropic Messages.

A call is answered with a :class:`Reply`. Its usage numbers are reported verbatim in
the provider's own fields, whatever the text length, with the provider's own
meaning: OpenAI's ``prompt_tokens`` includes the cached tokens
(``prompt_tokens_details.cached_tokens``), Anthropic's ``input_tokens`` excludes
``cache_read_input_tokens`` and ``cache_creation_input_tokens``. Streams are sent as
SSE, one event per frame.

Like the real services, a request without an API key (``Authorization: Bearer`` for
OpenAI; ``x-api-key`` or ``Authorization: Bearer`` for Anthropic), an Anthropic
request without ``anthropic-version``, or a body that is not a valid request is
refused in the provider's error shape (:func:`refuse`). The wire format
(:func:`refuse`, :func:`render`, :func:`apply_faults`) is plain functions of the
request and the reply.
"""

from __future__ import annotations

import json
import re
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"

# Error type, code and a default message per status, as each provider documents them.
OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", None, "You are not allowed to sample from this model."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low."),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out."),
    529: ("overloaded_error", "Overloaded"),
}
DEFAULT_TEXT = "Hello from the fake provider: this reply is streamed one word at a time."


@dataclass
class Reply:
    """What the fake provider answers to one model call.

    ``text`` is streamed one word per event; ``tool_calls`` are (name, arguments) pairs,
    their arguments streamed in fragments. ``cached_input_tokens`` is OpenAI's
    ``cached_tokens`` and Anthropic's ``cache_read_input_tokens``.

    ``status`` other than 200 answers an error in the provider's shape (``error_message``
    or a default). ``echo_credentials`` puts the API key the fake received (bearer token
    or ``x-api-key``) into the error message, or into the text of a 200 reply.

    Timing: ``delay_before_headers_s`` waits after reading the request, before the status
    line; ``chunk_delay_s`` waits before each event of a stream. Faults, counted in events
    already sent: ``malformed_after_chunks`` then sends one event whose JSON is cut short
    and drops the connection; ``disconnect_after_chunks`` drops the connection mid-body.
    For a non-streamed reply either fault applies to its one JSON body (cut in half, or
    half of it sent).
    """

    text: str = DEFAULT_TEXT
    input_tokens: int = 12
    cached_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0  # of cache_creation_input_tokens (Anthropic)
    output_tokens: int = 14
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    status: int = 200
    error_message: str = ""
    echo_credentials: bool = False
    delay_before_headers_s: float = 0.0
    chunk_delay_s: float = 0.0
    malformed_after_chunks: int | None = None
    disconnect_after_chunks: int | None = None


@dataclass(frozen=True)
class Planned:
    """A response ready to send: SSE events are separate frames, a JSON body is one."""

    status: int
    headers: list[tuple[str, str]]
    frames: list[bytes]
    streamed: bool
    abort: bool = False  # drop the connection instead of ending the body


# --- wire format ----------------------------------------------------------------------


def _random(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _base62(length: int) -> str:
    return _random(string.ascii_letters + string.digits, length)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def provider_for(path: str) -> str | None:
    return {OPENAI_PATH: "openai", ANTHROPIC_PATH: "anthropic"}.get(path.split("?", 1)[0])


def request_id(provider: str) -> tuple[str, str]:
    """The response header that carries the provider's request id."""
    if provider == "openai":
        return "x-request-id", f"req_{secrets.token_hex(16)}"
    return "request-id", f"req_011C{_base62(20)}"


def _json_response(
    provider: str, status: int, body: dict[str, Any], request: tuple[str, str]
) -> Planned:
    data = _dumps(body)
    headers = [("Content-Type", JSON_CONTENT_TYPE), ("Content-Length", str(len(data))), request]
    if provider == "openai":
        headers.append(("openai-processing-ms", "7"))
    if status == 429:
        headers.append(("retry-after", "1"))
    return Planned(status=status, headers=headers, frames=[data], streamed=False)


def _error_kind(provider: str, status: int) -> tuple[str, str | None, str]:
    """The provider's error type, code and default message for a status."""
    if provider == "openai":
        fallback = "server_error" if status >= 500 else "invalid_request_error"
        return OPENAI_ERRORS.get(status, (fallback, None, f"Error {status}."))
    fallback = "api_error" if status >= 500 else "invalid_request_error"
    kind, message = ANTHROPIC_ERRORS.get(status, (fallback, f"Error {status}."))
    return kind, None, message


def error_response(
    provider: str, status: int, message: str = "", *, param: str | None = None
) -> Planned:
    """An error as the provider sends it: its JSON shape, type and code for the status."""
    kind, code, default = _error_kind(provider, status)
    request = request_id(provider)
    if provider == "openai":
        error = {"message": message or default, "type": kind, "param": param, "code": code}
        return _json_response(provider, status, {"error": error}, request)
    body = {
        "type": "error",
        "error": {"type": kind, "message": message or default},
        "request_id": request[1],
    }
    return _json_response(provider, status, body, request)


def credential(provider: str, headers: dict[str, str]) -> str:
    """The API key a request carries, where the provider reads it.

    OpenAI: ``Authorization: Bearer``. Anthropic: ``x-api-key``, or ``Authorization:
    Bearer``, which is what its Python SDK sends since 2.x.
    """
    if provider == "anthropic" and headers.get("x-api-key", "").strip():
        return headers["x-api-key"].strip()
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme == "Bearer" else ""


def refuse(method: str, path: str, headers: dict[str, str], body: bytes) -> Planned | None:
    """The provider's refusal of a request it would not serve, or None if it would."""
    provider = provider_for(path)
    if provider is None or method != "POST":
        return error_response("openai", 404, f"Invalid URL ({method} {path})")
    if not credential(provider, headers):
        if provider == "openai":
            return error_response(provider, 401, "You didn't provide an API key.")
        return error_response(provider, 401, "x-api-key header is required")
    if provider == "anthropic" and not headers.get("anthropic-version"):
        return error_response(provider, 400, "anthropic-version: header is required")
    try:
        payload = json.loads(body)
    except ValueError:
        return error_response(provider, 400, "We could not parse the JSON body of your request.")
    if not isinstance(payload, dict):
        return error_response(provider, 400, "The request body must be a JSON object.")
    required = ("model", "messages") + (("max_tokens",) if provider == "anthropic" else ())
    for key in required:
        if key not in payload:
            if provider == "openai":
                return error_response(
                    provider, 400, f"Missing required parameter: '{key}'.", param=key
                )
            return error_response(provider, 400, f"{key}: Field required")
    return None


def render(path: str, headers: dict[str, str], payload: dict[str, Any], reply: Reply) -> Planned:
    """The provider's answer to an accepted request, as scripted by ``reply``."""
    provider = provider_for(path)
    assert provider is not None, path
    if reply.status != 200:
        message = reply.error_message or _error_kind(provider, reply.status)[2]
        if reply.echo_credentials:
            message = f"{message} (received credential: {credential(provider, headers)})"
        return error_response(provider, reply.status, message)
    if reply.echo_credentials:
        reply = replace(reply, text=f"{reply.text} {credential(provider, headers)}".strip())
    stream = payload.get("stream") is True
    model = str(payload.get("model"))
    if provider == "openai":
        if not stream:
            return _json_response(
                provider, 200, openai_completion(model, reply), request_id(provider)
            )
        options = payload.get("stream_options") or {}
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        events = openai_chunks(model, reply, include_usage=include_usage)
        frames = [b"data: " + _dumps(event) + b"\n\n" for event in events] + [b"data: [DONE]\n\n"]
    else:
        if not stream:
            return _json_response(
                provider, 200, anthropic_message(model, reply), request_id(provider)
            )
        frames = [
            b"event: " + name.encode() + b"\ndata: " + _dumps(event) + b"\n\n"
            for name, event in anthropic_events(model, reply)
        ]
    headers_out = [
        ("Content-Type", SSE_CONTENT_TYPE),
        ("Cache-Control", "no-cache"),
        request_id(provider),
    ]
    return Planned(status=200, headers=headers_out, frames=frames, streamed=True)


def apply_faults(planned: Planned, reply: Reply, provider: str) -> Planned:
    """The planned response broken the way ``reply`` asks (a cut JSON frame, a dropped link)."""
    if planned.status != 200:
        return planned
    if not planned.streamed:
        body = planned.frames[0]
        half = body[: len(body) // 2]
        if reply.malformed_after_chunks is not None:
            headers = [
                (k, str(len(half)) if k == "Content-Length" else v) for k, v in planned.headers
            ]
            return replace(planned, headers=headers, frames=[half])
        if reply.disconnect_after_chunks is not None:
            return replace(planned, frames=[half], abort=True)
        return planned
    if reply.malformed_after_chunks is not None:
        broken = (
            b'data: {"choices": [\n\n'
            if provider == "openai"
            else b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": {\n\n'
        )
        kept = planned.frames[: reply.malformed_after_chunks]
        return replace(planned, frames=[*kept, broken], abort=True)
    if reply.disconnect_after_chunks is not None:
        return replace(planned, frames=planned.frames[: reply.disconnect_after_chunks], abort=True)
    return planned


def words(text: str) -> list[str]:
    """Text in word-sized pieces, each with its leading space, as models stream tokens."""
    return re.findall(r"\s*\S+|\s+", text)


def _fragments(text: str, size: int = 8) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


# OpenAI Chat Completions -------------------------------------------------------------


def openai_usage(reply: Reply) -> dict[str, Any]:
    return {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
        "prompt_tokens_details": {"cached_tokens": reply.cached_input_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _openai_tool_ids(reply: Reply) -> list[str]:
    return [f"call_{_base62(24)}" for _ in reply.tool_calls]


def _openai_envelope(obj: str, model: str, completion_id: str) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_fake0001",
    }


def openai_completion(model: str, reply: Reply) -> dict[str, Any]:
    """A non-streamed ``chat.completion`` object."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.text or None,
        "refusal": None,
        "annotations": [],
    }
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for call_id, (name, args) in zip(_openai_tool_ids(reply), reply.tool_calls, strict=True)
        ]
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": "tool_calls" if reply.tool_calls else "stop",
    }
    completion = _openai_envelope("chat.completion", model, f"chatcmpl-{_base62(29)}")
    return {**completion, "choices": [choice], "usage": openai_usage(reply)}


def openai_chunks(model: str, reply: Reply, *, include_usage: bool) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a stream; usage last, only when asked for."""
    envelope = _openai_envelope("chat.completion.chunk", model, f"chatcmpl-{_base62(29)}")

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        extra = {"usage": None} if include_usage else {}
        return {**envelope, "choices": [choice], **extra}

    chunks = [chunk({"role": "assistant", "content": "" if reply.text else None, "refusal": None})]
    chunks += [chunk({"content": piece}) for piece in words(reply.text)]
    for index, (call_id, (name, args)) in enumerate(
        zip(_openai_tool_ids(reply), reply.tool_calls, strict=True)
    ):
        opening = {"index": index, "id": call_id, "type": "function"}
        chunks.append(
            chunk({"tool_calls": [{**opening, "function": {"name": name, "arguments": ""}}]})
        )
        chunks += [
            chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            for piece in _fragments(json.dumps(args))
        ]
    chunks.append(chunk({}, "tool_calls" if reply.tool_calls else "stop"))
    if include_usage:
        chunks.append({**envelope, "choices": [], "usage": openai_usage(reply)})
    return chunks


# Anthropic Messages ---------------------------------------------------------------------


def anthropic_usage(reply: Reply, *, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": reply.input_tokens,
        "cache_creation_input_tokens": reply.cache_creation_input_tokens,
        "cache_read_input_tokens": reply.cached_input_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": reply.cache_creation_input_tokens
            - reply.cache_creation_1h_input_tokens,
            "ephemeral_1h_input_tokens": reply.cache_creation_1h_input_tokens,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _anthropic_blocks(reply: Reply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
    blocks += [
        {"type": "tool_use", "id": f"toolu_01{_base62(22)}", "name": name, "input": args}
        for name, args in reply.tool_calls
    ]
    return blocks


def _anthropic_envelope(model: str) -> dict[str, Any]:
    return {"id": f"msg_01{_base62(22)}", "type": "message", "role": "assistant", "model": model}


def anthropic_message(model: str, reply: Reply) -> dict[str, Any]:
    """A non-streamed ``message`` object."""
    return {
        **_anthropic_envelope(model),
        "content": _anthropic_blocks(reply),
        "stop_reason": "tool_use" if reply.tool_calls else "end_turn",
        "stop_sequence": None,
        "usage": anthropic_usage(reply, output_tokens=reply.output_tokens),
    }


def _anthropic_block_events(index: int, block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    if block["type"] == "text":
        start = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in words(block["text"])]
    else:
        start = {**block, "input": {}}
        # The API opens every tool input with an empty fragment.
        pieces = ["", *_fragments(json.dumps(block["input"]))]
        deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]
    return [
        (
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        ),
        *(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            for delta in deltas
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]


def anthropic_events(model: str, reply: Reply) -> list[tuple[str, dict[str, Any]]]:
    """The (event name, data) pairs of a stream, in the documented order."""
    # message_start counts the first output token; message_delta's count is cumulative.
    message = {
        **_anthropic_envelope(model),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": anthropic_usage(reply, output_tokens=min(1, reply.output_tokens)),
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": message})
    ]
    ping = ("ping", {"type": "ping"})
    blocks = _anthropic_blocks(reply)
    if not blocks:
        events.append(ping)
    for index, block in enumerate(blocks):
        block_events = _anthropic_block_events(index, block)
        if index == 0:  # the API sends its ping right after the first block opens
            block_events.insert(1, ping)
        events += block_events
    stop_reason = "tool_use" if reply.tool_calls else "end_turn"
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    usage = {"output_tokens": reply.output_tokens}
    events.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


# --- the server ---------------------------------------------------------------------------


def asgi_app(reply_for: Callable[[dict[str, Any]], Reply]):
    """An ASGI app answering each call in the provider's wire format with
    ``reply_for(payload)``: the benchmark's and the demo's model stand-ins."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http", scope["type"]
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        path = scope["path"]
        planned = refuse(scope["method"], path, headers, body)
        if planned is None:
            payload = json.loads(body)
            planned = render(path, headers, payload, reply_for(payload))
        await send(
            {
                "type": "http.response.start",
                "status": planned.status,
                "headers": [
                    (name.lower().encode(), value.encode()) for name, value in planned.headers
                ],
            }
        )
        # uvicorn frames a body without Content-Length as chunked: one chunk per event.
        for frame in planned.frames:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app
