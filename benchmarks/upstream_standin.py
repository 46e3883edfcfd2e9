"""The model provider stand-in for the gateway benchmark: an ASGI app, fast enough not to matter.

    uvicorn benchmarks.upstream_standin:app --loop uvloop --http httptools --lifespan off

It answers ``POST /v1/chat/completions`` (OpenAI) and ``POST /v1/messages`` (Anthropic)
with exactly the bytes the tests' fake providers send (``gateway/provider_standin.py``
holds the one copy of the wire format), streamed when the request asks, with no delays.
Every accepted call gets the same reply: ``STANDIN_REPLY_WORDS`` words (default 40).
"""

from __future__ import annotations

import os

from gateway.provider_standin import Reply, asgi_app

WORDS = int(os.environ.get("STANDIN_REPLY_WORDS", "40"))
REPLY = Reply(text=" ".join(["word"] * WORDS), input_tokens=24, output_tokens=WORDS)


app = asgi_app(lambda payload: REPLY)
