"""A bare proxy for the gateway headroom benchmark: what relaying a call costs, and no more.

    BARE_UPSTREAM=http://127.0.0.1:PORT uvicorn benchmarks.bare_proxy:app --loop uvloop \
        --http httptools --workers 2

Built from the same pieces as our gateway (uvicorn with uvloop and httptools, aiohttp
upstream, orjson): it reads the body, parses it, forwards it with the caller's key
headers to the same path upstream, parses the answer (as anything that reads usage
must) and returns it. No token check, allow-list, price or ledger: the difference
between it and our gateway is what those cost. Never a product path.
"""

from __future__ import annotations

import os

import aiohttp
import orjson

UPSTREAM = os.environ.get("BARE_UPSTREAM", "")
PASSED = (b"authorization", b"x-api-key", b"anthropic-version", b"content-type")
_session: aiohttp.ClientSession | None = None


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["method"] != "POST":
        await send({"type": "http.response.start", "status": 405, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    orjson.loads(body)
    headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in PASSED}
    async with session().post(UPSTREAM + scope["path"], data=body, headers=headers) as answer:
        reply = await answer.read()
        status = answer.status
    orjson.loads(reply)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(reply)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": reply})


def session() -> aiohttp.ClientSession:
    global _session  # one per worker process, made on its event loop
    if _session is None:
        _session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        )
    return _session


async def lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _session is not None:
                await _session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
