"""The model stand-in `./dev demo` runs when no provider key is in the environment.

    uvicorn safer_claw.demo_model:app --host 127.0.0.1 --port 8099 --lifespan off

An ASGI app speaking OpenAI's chat completions (and Anthropic's messages) wire format,
with the bytes the tests' fake providers send (``gateway/provider_standin.py``): it
answers every call by quoting the last thing the user said, so a new user sees their
agent answer without an account at a model provider. It is no model: no tool calls.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.provider_standin import Reply, asgi_app

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


app = asgi_app(reply_to)
