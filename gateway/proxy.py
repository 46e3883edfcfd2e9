"""The gateway's HTTP front: a lean ASGI app for the two provider endpoints.

Why not a Django view: Django's ASGI handler gives every request its own
thread for database work (so a fresh database connection) and runs the whole
middleware stack, which together cost more than the entire latency budget of
a proxy. This app reads the request, does its database work in a small pool
of long-lived threads with one persistent connection each (``in_db``), and
forwards with one pooled ``httpx`` transport. Everything it decides comes from
``gateway.metering`` and ``gateway.providers``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from django.conf import settings
from django.db import connections

from gateway.metering import Admission, Refusal, admit, settle
from gateway.models import UsageStatus
from gateway.providers import ANTHROPIC, OPENAI, BadRequest, Call, Provider, StreamMeter, Usage

logger = logging.getLogger(__name__)

ROUTES: dict[str, Provider] = {
    "/gateway/openai/v1/chat/completions": OPENAI,
    "/gateway/anthropic/v1/messages": ANTHROPIC,
}
RUN_HEADER = "x-saferclaw-run"
PASSED_RESPONSE_HEADERS = ("x-request-id", "request-id", "openai-processing-ms")
SECRET_LOOKING = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|sca_[A-Za-z0-9_\-]{6,})")

_db_pool: ThreadPoolExecutor | None = None
_transports: dict[int, httpx.AsyncHTTPTransport] = {}


async def in_db(fn, /, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` in a gateway database thread (each keeps its connection open)."""
    global _db_pool
    if _db_pool is None:
        _db_pool = ThreadPoolExecutor(
            max_workers=settings.GATEWAY_DB_THREADS, thread_name_prefix="gateway-db"
        )
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_db_pool, functools.partial(fn, *args, **kwargs))


def upstream() -> httpx.AsyncHTTPTransport:
    """One pooled httpx transport per event loop (connections are bound to their loop).

    The transport, not an AsyncClient: the client's cookie, redirect and auth
    layers do nothing for a proxy and cost a few hundred microseconds a call.
    No proxy or CA bundle is taken from the environment.
    """
    loop_id = id(asyncio.get_running_loop())
    transport = _transports.get(loop_id)
    if transport is None:
        transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=100),
            trust_env=False,
        )
        _transports[loop_id] = transport
    return transport


class ClientGone(Exception):
    pass


async def application(scope: dict, receive, send) -> None:
    provider = ROUTES.get(scope["path"].rstrip("/"))
    if provider is None:
        await respond_json(send, 404, {"error": {"code": "not_found", "message": "Not found."}})
        return
    if scope["method"] != "POST":
        await respond_json(
            send, 405, provider.error_body(405, "Use POST."), extra=[(b"allow", b"POST")]
        )
        return
    try:
        await handle(scope, receive, send, provider)
    except ClientGone:
        return


async def handle(scope: dict, receive, send, provider: Provider) -> None:
    started = time.perf_counter()
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    token = provider.token(headers)
    if not token:
        await refuse(send, provider, 401, "Missing agent token.")
        return
    raw = await read_body(receive, headers, settings.GATEWAY_MAX_BODY_BYTES)
    if raw is None:
        await refuse(
            send,
            provider,
            400,
            f"Request body is larger than {settings.GATEWAY_MAX_BODY_BYTES} bytes.",
        )
        return
    try:
        payload = json.loads(raw)
    except ValueError:
        await refuse(send, provider, 400, "Request body is not valid JSON.")
        return
    if not isinstance(payload, dict):
        await refuse(send, provider, 400, "Request body must be a JSON object.")
        return
    try:
        admission, call = await in_db(
            admit,
            token=token,
            provider=provider,
            payload=payload,
            raw_size=len(raw),
            run_id=headers.get(RUN_HEADER, ""),
        )
    except Refusal as refusal:
        await refuse(send, provider, refusal.status, refusal.message)
        return
    except BadRequest as exc:
        await refuse(send, provider, 400, str(exc))
        return
    await forward(send, receive, provider, admission, call, headers, started)


async def forward(send, receive, provider, admission: Admission, call: Call, headers, started):
    base = getattr(settings, provider.upstream_setting).rstrip("/")
    wait = settings.GATEWAY_UPSTREAM_TIMEOUT_SECONDS
    request = httpx.Request(
        "POST",
        base + provider.path,
        content=call.body,
        headers=provider.upstream_headers(admission.provider_key, headers),
        extensions={"timeout": {"connect": 5.0, "read": wait, "write": wait, "pool": 5.0}},
    )
    try:
        response = await upstream().handle_async_request(request)
    except httpx.TimeoutException:
        await fail(send, provider, admission, started, 504, "The provider did not answer in time.")
        return
    except httpx.HTTPError:
        await fail(send, provider, admission, started, 502, "Could not reach the provider.")
        return
    if response.status_code >= 400:
        body = await response.aread()
        await response.aclose()
        message = upstream_message(body, response.status_code, admission)
        await fail(send, provider, admission, started, response.status_code, message)
        return
    if call.stream:
        await relay_stream(send, receive, provider, admission, call, response, started)
    else:
        await relay_body(send, provider, admission, response, started)


async def relay_body(send, provider: Provider, admission: Admission, response, started) -> None:
    try:
        body = await response.aread()
    except httpx.HTTPError:
        await fail(send, provider, admission, started, 502, "The provider's answer broke off.")
        return
    finally:
        await response.aclose()
    try:
        usage, tool_calls = provider.response_usage(json.loads(body))
    except (ValueError, AttributeError, TypeError):
        await fail(send, provider, admission, started, 502, "The provider's answer was malformed.")
        return
    await in_db(
        settle,
        admission,
        usage=usage,
        tool_calls=tool_calls,
        status=UsageStatus.OK,
        http_status=200,
        latency_ms=elapsed_ms(started),
        upstream_request_id=request_id(response),
    )
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *passed_headers(response),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def relay_stream(send, receive, provider, admission, call, response, started) -> None:
    """Pass events on as they arrive, metering them; settle whatever happens."""
    meter = StreamMeter(
        provider,
        client_wants_usage=call.client_wants_usage,
        upstream_request_id=request_id(response),
    )
    gone = asyncio.Event()
    watcher = asyncio.create_task(watch_disconnect(receive, gone))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache"),
                *passed_headers(response),
            ],
        }
    )
    try:
        await pump_events(send, provider, meter, response, gone)
    finally:
        watcher.cancel()
        await response.aclose()
        # Shielded: a cancelled request still settles, so spend is never lost.
        status = (
            UsageStatus.CLIENT_GONE
            if gone.is_set()
            else (UsageStatus.UPSTREAM_ERROR if meter.error else UsageStatus.OK)
        )
        await asyncio.shield(
            in_db(
                settle,
                admission,
                usage=meter.usage,
                tool_calls=meter.tool_calls,
                status=status,
                http_status=200,
                latency_ms=elapsed_ms(started),
                upstream_request_id=meter.upstream_request_id,
            )
        )
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def pump_events(send, provider: Provider, meter: StreamMeter, response, gone) -> None:
    # After the client goes away the stream is still read to its end: the
    # provider bills what it generates, and only its final usage says how much.
    buffer = b""
    try:
        async for piece in response.aiter_raw():
            buffer += piece.replace(b"\r\n", b"\n") if b"\r" in piece else piece
            events, buffer = split_events(buffer)
            passing = []
            for event in events:
                try:
                    if provider.read_event(meter, event):
                        passing.append(event + b"\n\n")
                except (ValueError, AttributeError, TypeError):
                    meter.error = "The provider sent a malformed event."
                    break
            if meter.error:
                passing.append(provider.stream_error_event(meter.error))
            if passing and not gone.is_set():
                await send(
                    {"type": "http.response.body", "body": b"".join(passing), "more_body": True}
                )
            if meter.error:
                return
    except httpx.TimeoutException:
        meter.error = "The provider stopped sending in time."
    except httpx.HTTPError:
        meter.error = "The provider's stream broke off."
    if not meter.error and buffer.strip():
        meter.error = "The provider's stream ended in the middle of an event."
    if meter.error and not gone.is_set():
        await send(
            {
                "type": "http.response.body",
                "body": provider.stream_error_event(meter.error),
                "more_body": True,
            }
        )


def split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete SSE events (without their blank-line terminator) and the rest."""
    *events, rest = buffer.split(b"\n\n")
    return [e for e in events if e.strip()], rest


async def watch_disconnect(receive, gone: asyncio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


async def fail(send, provider, admission: Admission, started, status: int, message: str) -> None:
    """Settle a call that produced nothing usable, and say so in the provider's shape."""
    await in_db(
        settle,
        admission,
        usage=Usage(),
        tool_calls=0,
        status=UsageStatus.UPSTREAM_ERROR,
        http_status=status,
        latency_ms=elapsed_ms(started),
    )
    await refuse(send, provider, status, message)


def upstream_message(body: bytes, status: int, admission: Admission) -> str:
    """The provider's error message, with any credential taken out."""
    try:
        error = json.loads(body).get("error")
        message = error.get("message") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        message = None
    text = str(message or f"The provider answered HTTP {status}.")[:500]
    text = text.replace(admission.provider_key, "[redacted]")
    return SECRET_LOOKING.sub("[redacted]", text)


async def read_body(receive, headers: dict[str, str], limit: int) -> bytes | None:
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            return None
        chunks.append(body)
        if not message.get("more_body"):
            return b"".join(chunks)


async def refuse(send, provider: Provider, status: int, message: str) -> None:
    await respond_json(send, status, provider.error_body(status, message))


async def respond_json(send, status: int, body: dict, *, extra: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


def passed_headers(response: httpx.Response) -> list[tuple[bytes, bytes]]:
    return [
        (name.encode(), response.headers[name].encode())
        for name in PASSED_RESPONSE_HEADERS
        if name in response.headers
    ]


def request_id(response: httpx.Response) -> str:
    return response.headers.get("x-request-id") or response.headers.get("request-id") or ""


def elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def close_db_threads() -> None:
    """Close every gateway thread's connection and stop the threads (tests, shutdown)."""
    global _db_pool
    pool, _db_pool = _db_pool, None
    if pool is None:
        return
    workers = pool._max_workers
    barrier = threading.Barrier(workers)

    def close_here() -> None:
        barrier.wait(timeout=10)  # one call per thread: each waits for the others
        connections.close_all()

    for future in [pool.submit(close_here) for _ in range(workers)]:
        future.result(timeout=15)
    pool.shutdown(wait=True)
