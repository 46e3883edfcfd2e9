"""The model stand-in `./dev demo` runs when no provider key is in the environment.

    uvicorn safer_claw.demo_model:app --host 127.0.0.1 --port 8099 --lifespan off

An ASGI app speaking OpenAI's chat completions (and Anthropic's messages) wire format,
with the bytes of the tests' fake providers (``gateway/tests/fake_providers.py``): it
answers every call by quoting the last thing the user said, so a new user sees their
agent answer without an account at a model provider. It is no model: no tool calls.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.tests.fake_providers import Reply, refuse, render

PREFIX = "Demo model here (a stand-in, not a real LLM). You said:"


def _text(content: Any) -> str:
    """A message's text, whether a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def reply_to(payload: dict[str, Any]) -> Reply:
    said = next(
        (
            _text(m.get("content"))
            for m in reversed(payload.get("messages") or [])
            if isinstance(m, dict) and m.get("role") == "user"
        ),
        "",
    )
    text = f"{PREFIX} {said.strip()[:500] or '(nothing)'}"
    return Reply(
        text=text, input_tokens=len(json.dumps(payload)) // 4, output_tokens=len(text.split())
    )


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
    planned = refuse(scope["method"], path, headers, body)
    if planned is None:
        payload = json.loads(body)
        planned = render(path, headers, payload, reply_to(payload))
    await send(
        {
            "type": "http.response.start",
            "status": planned.status,
            "headers": [(name.lower().encode(), value.encode()) for name, value in planned.headers],
        }
    )
    for frame in planned.frames:
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
