"""POST /webhooks/agent-kill/<agent_id>: the kill switch's two HTTP fronts (see agents.kill_switch).

Both are thin: they read the call and hand it to ``agents.kill_switch``.

- ``agent_kill_asgi`` is the one production uses: ``safer_claw.asgi`` sends the
  path here, past Django's request cycle. Django's ASGI handler creates a
  thread per request, hops between it and the event loop several times and
  runs the middleware, and while the gateway is busy each hop waits for the
  loop and the GIL: that alone took longer than the token's whole refusal
  budget. Here the body is read on the loop, then one hop runs the fast part
  (find the agent, check the signature, claim it and revoke the tokens) in a
  thread that keeps its database connection open; the slow part (state,
  Docker, audit) runs after it in an ordinary worker thread, so a burst of
  kills never queues a revocation behind a container stop.
- ``agent_kill`` is a plain Django view, for WSGI, ``runserver`` and the test
  client. No DRF throttling, cache or session: it answers with only the
  database and the droplet up (Redis and Celery may be down).
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.request import split_domain_port, validate_host
from django.utils.datastructures import CaseInsensitiveMapping
from django.views.decorators.csrf import csrf_exempt

from agents.kill_switch import (
    KillCall,
    KillCallResult,
    StartedKill,
    finish_kill_call,
    handle_kill_call,
    start_kill_call,
)
from safer_claw.api import error_body
from safer_claw.log_filters import DATABASE_DOWN

PATH_PREFIX = "/webhooks/agent-kill/"
# Revocations are short (two queries) and each thread keeps its connection.
FAST_THREADS = 2


@csrf_exempt  # authenticated by its HMAC signature, never by a browser session
def agent_kill(request: HttpRequest, agent_id: str) -> HttpResponse:
    # One byte past the limit is enough to refuse; a larger body is never read.
    body = request.read(settings.KILL_SWITCH_MAX_BODY_BYTES + 1)
    result = handle_kill_call(
        KillCall(
            agent_id=agent_id,
            method=request.method or "",
            headers=request.headers,
            body=body,
            source_ip=request.META.get("REMOTE_ADDR"),
        )
    )
    response = JsonResponse(result.body, status=result.status)
    for name, value in _extra_headers(result):
        response[name] = value
    return response


def _extra_headers(result: KillCallResult) -> list[tuple[str, str]]:
    headers = []
    if result.status == 405:
        headers.append(("Allow", "POST"))
    if result.deprecated:
        # RFC 9745: the v1 signature that was accepted is deprecated; sign with v2.
        headers.append(("Deprecation", "true"))
    return headers


# --- The ASGI front ----------------------------------------------------------------------------

_fast_pool: ThreadPoolExecutor | None = None
_fast_pool_lock = threading.Lock()


async def agent_kill_asgi(scope: dict, receive: Callable, send: Callable) -> None:
    """The ASGI app for ``/webhooks/agent-kill/<agent_id>`` (an HTTP scope)."""
    agent_id = scope["path"][len(PATH_PREFIX) :]
    headers = _headers(scope)
    if not agent_id or "/" in agent_id:
        await _respond(send, KillCallResult(404, error_body("not_found", "Not found.")))
        return
    if not _host_allowed(headers.get("host", "")):
        await _respond(send, KillCallResult(400, error_body("bad_request", "Bad Request")))
        return
    body = await _read_body(receive, settings.KILL_SWITCH_MAX_BODY_BYTES + 1)
    client = scope.get("client") or (None, None)
    call = KillCall(
        agent_id=agent_id,
        method=scope["method"],
        headers=headers,
        body=body,
        source_ip=client[0],
    )
    try:
        started = await _in_fast_thread(start_kill_call, call)
        result = await sync_to_async(_finish, thread_sensitive=False)(started)
    except DATABASE_DOWN:
        # Without the database no signature can be recorded: nothing was done.
        result = KillCallResult(
            503, error_body("service_unavailable", "The database is unavailable; retry shortly.")
        )
    await _respond(send, result)


def _headers(scope: dict) -> CaseInsensitiveMapping:
    """The request's headers; a repeated one joined with commas, as Django does."""
    joined: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        joined[name] = f"{joined[name]},{value}" if name in joined else value
    return CaseInsensitiveMapping(joined)


def _host_allowed(host: str) -> bool:
    """Django's ALLOWED_HOSTS check, which its request cycle would have made."""
    domain, _ = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return bool(domain) and validate_host(domain, allowed)


async def _read_body(receive: Callable, limit: int) -> bytes:
    """At most ``limit`` bytes of the body; the rest is never kept."""
    body = b""
    more = True
    while more and len(body) < limit:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body[:limit]


async def _in_fast_thread(fn: Callable[..., StartedKill], *args: Any) -> StartedKill:
    global _fast_pool
    with _fast_pool_lock:
        if _fast_pool is None:
            _fast_pool = ThreadPoolExecutor(max_workers=FAST_THREADS, thread_name_prefix="kill")
        pool = _fast_pool
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(pool, functools.partial(_keeping_connection, fn, *args))


def _keeping_connection(fn: Callable[..., StartedKill], *args: Any) -> StartedKill:
    try:
        return fn(*args)
    finally:
        # The thread keeps its connection for the next kill, unless an error broke it.
        if connection.errors_occurred:
            connection.close_if_unusable_or_obsolete()


def _finish(started: StartedKill) -> KillCallResult:
    try:
        return finish_kill_call(started)
    finally:
        connections.close_all()  # back to the pool, as at the end of a Django request


async def _respond(send: Callable, result: KillCallResult) -> None:
    body = json.dumps(result.body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in _extra_headers(result)),
    ]
    await send({"type": "http.response.start", "status": result.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def close_kill_threads() -> None:
    """Close the fast threads' connections and stop them (tests, shutdown)."""
    global _fast_pool
    with _fast_pool_lock:
        pool, _fast_pool = _fast_pool, None
    if pool is None:
        return
    barrier = threading.Barrier(FAST_THREADS)

    def close_here() -> None:
        barrier.wait(timeout=10)  # one call per thread: each waits for the others
        connections.close_all()

    for future in [pool.submit(close_here) for _ in range(FAST_THREADS)]:
        future.result(timeout=15)
    pool.shutdown(wait=True)
