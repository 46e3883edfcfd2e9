"""The gateway's HTTP front: a lean ASGI app for the two provider endpoints.

Why not a Django view: Django's ASGI handler runs the middleware stack and hops
to a thread for database work, which together cost more than the whole latency
budget of a proxy. Here, on the event loop: the agent's token is checked before
the body is read; the body is checked against the provider's allow-lists; ONE
statement admits the call (gateway.ledger_sql; calls arriving together share it:
gateway.batches), committed to disk before the call is forwarded with aiohttp
(C-accelerated HTTP parsing, a pooled connector per loop); the answer goes back;
and only then is the call settled, still durably (one statement, shared the same
way), but off the client's path. A process that dies before settling leaves a pending
ledger row that the sweeper charges in full.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import aiohttp
import orjson
from django.conf import settings
from django.utils import timezone

from agents.conversation_services import stop_run
from agents.conversations import StopReason
from agents.tokens import hash_token, looks_like_token
from gateway.ledger import (
    OUTAGE,
    AgentConfig,
    Outcome,
    Reservation,
    admit_params,
    close_ledgers,
    close_loop_ledger,
    in_db,
    ledger,
    refusal_params,
    reservation_for,
    settle_until_taken,
)
from gateway.metering import Price, Refusal, pause_for_cap, refusal_for
from gateway.models import UsageStatus
from gateway.providers import ANTHROPIC, OPENAI, BadRequest, Call, Provider, StreamMeter
from safer_claw import boundary

logger = logging.getLogger(__name__)

ROUTES: dict[str, Provider] = {
    "/gateway/openai/v1/chat/completions": OPENAI,
    "/gateway/anthropic/v1/messages": ANTHROPIC,
}
PASSED_RESPONSE_HEADERS = ("x-request-id", "request-id", "openai-processing-ms")
SECRET_LOOKING = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|sca_[A-Za-z0-9_\-]{6,})")
# A verdict that only calls in flight refuse is tried again this often: a
# sequential client's previous call settles just after its answer went out.
INFLIGHT_WAITS = (0.002, 0.005, 0.01, 0.02, 0.04)
PRICE_TTL_SECONDS = 10.0
SLOWEST_TOKENS_PER_SECOND = 20  # a slow model's output rate, for a JSON answer's wait
MAX_ERROR_BODY = 64 * 1024
RETRY_AFTER_SECONDS = "5"

_sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
_prices: dict[tuple[str, str], tuple[Price | None, float]] = {}
CONFIG_TTL_SECONDS = 2.0
_configs: dict[str, tuple[AgentConfig, float]] = {}


class ClientGone(Exception):
    pass


class Refused(Exception):
    """Answer the client with this status and message; nothing was reserved."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def upstream() -> aiohttp.ClientSession:
    """One aiohttp session per event loop (its connections are bound to the loop).

    No proxy, CA bundle or cookie jar from the environment; no decompression
    (nothing is asked compressed); no default headers: we set every header.
    """
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        )
        _sessions[loop] = session
    return session


async def shutdown() -> None:
    """Close this loop's upstream connections and database pool (a worker stopping)."""
    loop = asyncio.get_running_loop()
    session = _sessions.pop(loop, None)
    if session is not None:
        await session.close()
    await close_loop_ledger()


def close_all(timeout: float = 10) -> None:
    """Shut every event loop's gateway state down from another thread (tests), then the
    database threads."""
    for loop in list(_sessions):
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout)
    close_ledgers(timeout)


def forget_prices() -> None:
    """Drop cached prices (called when an operator edits the price table)."""
    _prices.clear()


async def price_for(provider: str, model: str) -> Price | None:
    """The price of exactly ``model`` (a dated snapshot is its own row), cached briefly."""
    key = (provider, model)
    cached = _prices.get(key)
    if cached and time.monotonic() - cached[1] < PRICE_TTL_SECONDS:
        return cached[0]
    price = await ledger().price(provider, model)
    _prices[key] = (price, time.monotonic())
    return price


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


async def refuse_bad_input(scope: dict, send, message: str) -> None:
    """A request safer_claw.boundary refused (path, query, headers), in the provider's shape."""
    provider = ROUTES.get(scope["path"].rstrip("/"))
    if provider is None:
        await respond_json(send, 400, {"error": {"code": "bad_request", "message": message}})
    else:
        await refuse(send, provider, 400, message)


async def handle(scope: dict, receive, send, provider: Provider) -> None:
    started = time.perf_counter()
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    try:
        token_hash, config = await authenticate(provider, headers)
        extra_headers = provider.check_headers(headers)
        raw = await read_body(receive, headers, settings.GATEWAY_MAX_BODY_BYTES)
        call, price, reservation = await admit(provider, token_hash, config, raw)
    except Refused as refused:
        await refuse(send, provider, refused.status, refused.message, refused.param)
        return
    except BadRequest as exc:
        await refuse(send, provider, 400, str(exc), exc.param)
        return
    except OUTAGE as exc:
        # Nothing was reserved (admission is one statement): the SDKs retry a 503.
        logger.warning("gateway: database unavailable (%s): answered 503", exc.__class__.__name__)
        await respond_json(
            send,
            503,
            provider.error_body(503, "The gateway cannot reach its database; retry shortly."),
            extra=[(b"retry-after", RETRY_AFTER_SECONDS.encode())],
        )
        return
    request_headers = {**provider.upstream_headers(config.provider_key), **extra_headers}
    await forward(send, receive, provider, call, price, reservation, request_headers, started)


async def agent_config(token_hash: str) -> AgentConfig | None:
    """The token's agent settings, read at most every CONFIG_TTL_SECONDS per process.

    Only the decision to read the body rests on this; the admission statement
    checks the token (revoked or not) and these settings again, under lock.
    """
    now = time.monotonic()
    cached = _configs.get(token_hash)
    if cached and now < cached[1]:
        return cached[0]
    config = await ledger().config(token_hash)
    if config is None:
        _configs.pop(token_hash, None)
        return None
    if len(_configs) >= 10_000:
        _configs.clear()
    _configs[token_hash] = (config, now + CONFIG_TTL_SECONDS)
    return config


async def authenticate(provider: Provider, headers: dict[str, str]) -> tuple[str, AgentConfig]:
    """The agent's token, checked before the body is read."""
    token = provider.token(headers)
    config = await agent_config(hash_token(token)) if looks_like_token(token) else None
    if config is None:
        raise Refused(401, "Invalid, unknown or revoked agent token.")
    if config.provider != provider.name:
        raise Refused(400, f"This agent is set up for {config.provider}, not {provider.name}.")
    if not config.sealed_key:
        raise Refused(403, "This agent has no provider key on file.")
    return hash_token(token), config


async def admit(
    provider: Provider, token_hash: str, config: AgentConfig, raw: bytes
) -> tuple[Call, Price, Reservation]:
    """Check the body, then admit and reserve in one statement; raise Refused if not."""
    for _ in range(3):
        try:
            payload = boundary.loads(raw)
        except boundary.BadInput as exc:  # not JSON, too deep, a NUL, a huge number
            raise Refused(400, exc.message, exc.where) from exc
        if not isinstance(payload, dict):
            raise Refused(400, "Request body must be a JSON object.")
        call = provider.prepare(
            payload, raw_size=len(raw), max_tokens=config.max_tokens, allowed=config.allowed
        )
        price = await price_for(provider.name, call.model)
        if price is None:
            raise Refused(
                400,
                f"Model '{call.model}' has no price in the price table, so it is refused "
                "rather than metered as free.",
                "model",
            )
        if not price.prices(call):
            raise Refused(400, f"A one-hour cache write has no price for '{call.model}'.")
        cost = price.worst_cost(call)
        now = timezone.now()
        for wait in (*INFLIGHT_WAITS, None):
            params = admit_params(
                token_hash=token_hash,
                config=config,
                call=call,
                provider=provider.name,
                cost=cost,
                now=now,
            )
            verdict = await ledger().admit(params)
            if verdict is None:
                _configs.pop(token_hash, None)
                raise Refused(401, "Invalid, unknown or revoked agent token.")
            if wait is None or not (verdict.code == "busy" or verdict.code.endswith("_inflight")):
                break
            await asyncio.sleep(wait)
            now = timezone.now()
        if verdict.code == "ok":
            return call, price, reservation_for(params, verdict, call)
        if verdict.code not in ("stale", "busy"):
            refusal = refusal_for(verdict, tokens=call.worst_case_tokens, cost=cost)
            await record_refusal(verdict, call, refusal)
            raise Refused(refusal.status, refusal.message)
        # The agent's settings changed since they were read: read them again.
        _configs.pop(token_hash, None)
        fresh = await agent_config(token_hash)
        if fresh is None:
            raise Refused(401, "Invalid, unknown or revoked agent token.")
        config = fresh
    raise Refused(409, "The agent's settings keep changing; retry.")


# Refusals that end the run: nothing the agent does within it can pass them again,
# so the run stops here and its owner is told which limit (not a later timeout).
RUN_ENDING_REFUSALS = {
    "run_runtime": StopReason.MAX_RUNTIME,
    "run_steps": StopReason.MAX_MODEL_STEPS,
    "run_tools": StopReason.MAX_TOOL_CALLS,
    "day_tools": StopReason.MAX_TOOL_CALLS_PER_DAY,
}


async def record_refusal(verdict, call: Call, refusal: Refusal) -> None:
    now = timezone.now()
    if verdict.run_id is not None:
        detail = {"limit": refusal.limit, "message": refusal.message, "model": call.model}
        await ledger().refusal_step(refusal_params(verdict.run_id, call.model, detail, now))
        if stop_reason := RUN_ENDING_REFUSALS.get(verdict.code):
            await in_db(stop_run, run_id=verdict.run_id, reason=stop_reason, detail=refusal.message)
    if refusal.pause_reason:
        from agents.models import Agent

        def pause() -> None:
            pause_for_cap(Agent.objects.get(pk=verdict.agent_id), refusal.pause_reason)

        await in_db(pause)


# --- forwarding --------------------------------------------------------------------------


class Settler:
    """Settles one admitted call exactly once, after its answer went out."""

    def __init__(self, call: Call, price: Price, reservation: Reservation, started: float) -> None:
        self.call, self.price, self.reservation, self.started = call, price, reservation, started

    async def __call__(self, outcome_status: str, http_status: int | None, **kwargs: Any) -> None:
        answer = kwargs.pop("answer", None)
        full = kwargs.pop("full", False)
        latency = int((time.perf_counter() - self.started) * 1000)
        if full or (answer is not None and not answer.usage.final):
            outcome = Outcome.full_reservation(
                outcome_status,
                http_status=http_status,
                latency_ms=latency,
                tool_names=answer.tool_names if answer else [],
                **kwargs,
            )
        elif answer is not None:
            outcome = Outcome(
                status=outcome_status,
                http_status=http_status,
                usage=answer.usage,
                cost=self.price.cost(answer.usage),
                tool_names=answer.tool_names,
                tool_calls=answer.delivered_tool_calls,
                latency_ms=latency,
                **kwargs,
            )
        else:  # the provider answered an error: it bills nothing
            outcome = Outcome(
                status=outcome_status, http_status=http_status, latency_ms=latency, **kwargs
            )
        # Shielded: a cancelled request still settles, so spend is never lost.
        await asyncio.shield(self._settle(outcome))

    async def _settle(self, outcome: Outcome) -> None:
        await settle_until_taken(
            lambda: ledger().settle(
                self.reservation, outcome, model=self.call.model, now=timezone.now()
            ),
            f"call {self.reservation.record_id}",
        )


async def forward(send, receive, provider, call, price, reservation, headers, started) -> None:
    settle = Settler(call, price, reservation, started)
    base = getattr(settings, provider.upstream_setting).rstrip("/")
    wait = settings.GATEWAY_UPSTREAM_TIMEOUT_SECONDS
    if not call.stream:
        # A JSON answer arrives whole, after the model wrote all of it: give a
        # long answer the time it needs, so the wait is not cut while tokens flow.
        wait = max(wait, call.max_output_tokens / SLOWEST_TOKENS_PER_SECOND)
    try:
        response = await upstream().post(
            base + provider.path,
            data=call.body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=wait),
        )
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
        # Nothing was sent: the provider saw no call.
        await refuse(send, provider, 502, "Could not reach the provider.")
        await settle(UsageStatus.UPSTREAM_ERROR, 502)
        return
    except TimeoutError:
        await refuse(send, provider, 504, "The provider did not answer in time.")
        await settle(UsageStatus.UPSTREAM_ERROR, 504, full=True)
        return
    except aiohttp.ClientError:
        await refuse(send, provider, 502, "The provider's answer broke off.")
        await settle(UsageStatus.UPSTREAM_ERROR, 502, full=True)
        return
    try:
        if response.status >= 400:
            await relay_error(send, provider, response, headers, settle)
        elif call.stream:
            await relay_stream(send, receive, provider, call, response, settle)
        else:
            await relay_body(send, provider, call, response, settle)
    finally:
        response.release()


async def relay_error(send, provider, response, headers, settle: Settler) -> None:
    try:
        body = await response.content.read(MAX_ERROR_BODY)
    except (aiohttp.ClientError, TimeoutError):
        body = b""
    key = headers.get("authorization", "").removeprefix("Bearer ") or headers.get("x-api-key", "")
    await refuse(send, provider, response.status, upstream_message(body, response.status, key))
    await settle(UsageStatus.UPSTREAM_ERROR, response.status)


async def relay_body(send, provider: Provider, call: Call, response, settle: Settler) -> None:
    try:
        body = await response.read()
    except TimeoutError:
        await refuse(send, provider, 504, "The provider did not answer in time.")
        await settle(UsageStatus.UPSTREAM_ERROR, 504, full=True)
        return
    except aiohttp.ClientError:
        await refuse(send, provider, 502, "The provider's answer broke off.")
        await settle(UsageStatus.UPSTREAM_ERROR, 502, full=True)
        return
    try:
        answer = provider.read_answer(orjson.loads(body), call)
    except (ValueError, AttributeError, TypeError):
        await refuse(send, provider, 502, "The provider's answer was malformed.")
        await settle(UsageStatus.UPSTREAM_ERROR, 502, full=True)
        return
    request_id = response_request_id(response)
    if answer.refused:
        await refuse(send, provider, 502, answer.refused)
        await settle(UsageStatus.REFUSED_RESPONSE, 502, answer=answer, request_id=request_id)
        return
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
    await settle(UsageStatus.OK, 200, answer=answer, request_id=request_id)


async def relay_stream(send, receive, provider, call, response, settle: Settler) -> None:
    """Pass events on as they arrive, metering them; settle whatever happens, after the end."""
    meter = StreamMeter(call, upstream_request_id=response_request_id(response))
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
    if not gone.is_set():
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    complete = meter.ended and not meter.error and meter.answer.usage.final
    if meter.answer.refused:
        status = UsageStatus.REFUSED_RESPONSE
    elif gone.is_set():
        status = UsageStatus.CLIENT_GONE
    else:
        status = UsageStatus.OK if complete else UsageStatus.UPSTREAM_ERROR
    await settle(
        status,
        200,
        answer=meter.answer,
        full=not complete,
        request_id=meter.upstream_request_id,
    )


async def pump_events(send, provider: Provider, meter: StreamMeter, response, gone) -> None:
    # After the client goes away, or after an answer is refused, the stream is
    # still read to its end: the provider bills what it generates, and only its
    # closing usage says how much.
    buffer = b""
    told = False
    try:
        async for piece in response.content.iter_any():
            buffer += piece.replace(b"\r\n", b"\n") if b"\r" in piece else piece
            *events, buffer = buffer.split(b"\n\n")
            passing = []
            for event in events:
                if not event.strip():
                    continue
                refused_before = bool(meter.answer.refused)
                try:
                    keep = provider.read_event(meter, event)
                except (ValueError, AttributeError, TypeError):
                    meter.error = "The provider sent a malformed event."
                    break
                if meter.answer.refused:
                    if not refused_before and not told:
                        passing.append(provider.stream_error_event(meter.answer.refused))
                        told = True
                    continue
                if keep:
                    passing.append(event + b"\n\n")
            if meter.error and not told:
                passing.append(provider.stream_error_event(meter.error))
                told = True
            if passing and not gone.is_set():
                await send(
                    {"type": "http.response.body", "body": b"".join(passing), "more_body": True}
                )
            if meter.error:
                return
    except TimeoutError:
        meter.error = "The provider stopped sending in time."
    except aiohttp.ClientError:
        meter.error = "The provider's stream broke off."
    if not meter.error and buffer.strip():
        meter.error = "The provider's stream ended in the middle of an event."
    if not meter.error and not meter.ended:
        meter.error = "The provider's stream ended before its end."
    if meter.error and not told and not gone.is_set():
        await send(
            {
                "type": "http.response.body",
                "body": provider.stream_error_event(meter.error),
                "more_body": True,
            }
        )


async def watch_disconnect(receive, gone: asyncio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


def upstream_message(body: bytes, status: int, provider_key: str) -> str:
    """The provider's error message, with any credential taken out."""
    try:
        error = orjson.loads(body).get("error")
        message = error.get("message") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        message = None
    text = str(message or f"The provider answered HTTP {status}.")[:500]
    if provider_key:
        text = text.replace(provider_key, "[redacted]")
    return SECRET_LOOKING.sub("[redacted]", text)


async def read_body(receive, headers: dict[str, str], limit: int) -> bytes:
    declared = headers.get("content-length", "")
    too_large = Refused(400, f"Request body is larger than {limit} bytes.")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise too_large
        chunks.append(body)
        if not message.get("more_body"):
            return b"".join(chunks)


async def refuse(
    send, provider: Provider, status: int, message: str, param: str | None = None
) -> None:
    await respond_json(send, status, provider.error_body(status, message, param))


async def respond_json(send, status: int, body: dict, *, extra: list | None = None) -> None:
    data = orjson.dumps(body)
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


def passed_headers(response: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    return [
        (name.encode(), response.headers[name].encode())
        for name in PASSED_RESPONSE_HEADERS
        if name in response.headers
    ]


def response_request_id(response: aiohttp.ClientResponse) -> str:
    return response.headers.get("x-request-id") or response.headers.get("request-id") or ""
