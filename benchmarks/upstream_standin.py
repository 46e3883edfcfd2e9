"""The model provider stand-in for the gateway benchmark: an ASGI app, fast enough not to matter.

    uvicorn benchmarks.upstream_standin:app --loop uvloop --http httptools --lifespan off

It answers ``POST /v1/chat/completions`` (OpenAI) and ``POST /v1/messages`` (Anthropic)
with exactly the bytes the tests' fake providers send (``gateway/tests/fake_providers.py``
holds the one copy of the wire format), streamed when the request asks, with no delays.
Every accepted call gets the same reply: ``STANDIN_REPLY_WORDS`` words (default 40).
"""

from __future__ import annotations

import json
import os
from typing import Any

from gateway.tests.fake_providers import Reply, refuse, render

WORDS = int(os.environ.get("STANDIN_REPLY_WORDS", "40"))
REPLY = Reply(text=" ".join(["word"] * WORDS), input_tokens=24, output_tokens=WORDS)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http", scope["type"]
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    path = scope["path"]
    planned = refuse(scope["method"], path, headers, body) or render(
        path, headers, json.loads(body), REPLY
    )
    await send(
        {
            "type": "http.response.start",
            "status": planned.status,
            "headers": [(name.lower().encode(), value.encode()) for name, value in planned.headers],
        }
    )
    # uvicorn frames a body without Content-Length as chunked: one chunk per event.
    for frame in planned.frames:
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
