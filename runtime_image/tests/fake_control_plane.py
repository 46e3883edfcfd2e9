"""A stand-in control plane for the runtime's own tests (no Django, no Docker).

It speaks the agent API's wire format (inbox long poll, reply, tools,
heartbeat) and the gateway's OpenAI chat-completions endpoint, with the model's
answers scripted per test: ``model`` is a function of the request body that
returns a ``chat.completion`` object (see :func:`completion`).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


def completion(text: str = "", tool_calls: list[tuple[str, Any]] | None = None, *, finish=None):
    """A chat.completion answering ``text``, or asking for (function name, arguments) calls."""
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if tool_calls:
        message["tool_calls"] = [
            {
                "id": f"call_{index}_{uuid.uuid4().hex[:8]}",
                "type": "function",
                "function": {
                    "name": name,
                    "arguments": args if isinstance(args, str) else json.dumps(args),
                },
            }
            for index, (name, args) in enumerate(tool_calls)
        ]
    reason = finish or ("tool_calls" if tool_calls else "stop")
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "gpt-test",
        "choices": [{"index": 0, "message": message, "finish_reason": reason}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def handout(
    content: str = "Hello",
    *,
    run_id: str | None = None,
    tools: list[dict[str, Any]] | None = None,
    max_model_steps: int = 5,
    max_tool_calls: int = 5,
    max_runtime_seconds: int = 30,
    max_tokens_per_call: int = 256,
    instructions: str = "",
    system_prompt: str = "OPERATOR PROMPT",
    provider: str = "openai",
    role: str = "owner",
) -> dict[str, Any]:
    """What the control plane's inbox hands out (agents.agent_api.inbox_payload)."""
    now = datetime.now(UTC)
    return {
        "run": {
            "id": run_id or str(uuid.uuid4()),
            "handed_out": 1,
            "started_at": now.isoformat(),
            "deadline": (now + timedelta(seconds=max_runtime_seconds)).isoformat(),
            "limits": {
                "max_model_steps": max_model_steps,
                "max_tool_calls": max_tool_calls,
                "max_runtime_seconds": max_runtime_seconds,
                "max_tokens_per_call": max_tokens_per_call,
            },
            "used": {"model_calls": 0, "tool_calls": 0},
        },
        "message": {"id": 1, "role": role, "content": content, "created_at": now.isoformat()},
        "history": [],
        "model": {"provider": provider, "name": "gpt-test"},
        "system_prompt": system_prompt,
        "owner": {"instructions": instructions, "time_zone": "Europe/Paris"},
        "tools": tools if tools is not None else [TIME_NOW],
    }


TIME_NOW = {
    "name": "time.now",
    "description": "The time.",
    "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
}


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeControlPlane:
    # The model: a completion (answered 200) or a (status, body) pair, per request body.
    model: Callable[[dict[str, Any]], Any] = lambda body: completion("Hi!")
    tool: Callable[[str, Any], tuple[int, Any]] = lambda name, args: (
        200,
        {"result": {"tool": name}, "untrusted": True},
    )
    inbox_status: int = 200  # what the inbox answers when it has nothing to hand out: 204
    requests: list[Seen] = field(default_factory=list)
    replies: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._handouts: deque[dict[str, Any]] = deque()
        self._changed = threading.Condition()
        plane = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                plane._serve(self)

            def do_POST(self) -> None:
                plane._serve(self)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a runtime killed mid-request is what some tests do

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeControlPlane:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._changed:
            self._changed.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def hand_out(self, body: dict[str, Any]) -> None:
        with self._changed:
            self._handouts.append(body)
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise AssertionError("condition not met in time")

    def paths(self, prefix: str = "") -> list[str]:
        return [seen.path for seen in self.requests if seen.path.startswith(prefix)]

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        url = urlsplit(handler.path)
        with self._changed:
            self.requests.append(Seen(handler.command, url.path, dict(handler.headers), body))
            self._changed.notify_all()
        status, answer = self._route(handler.command, url.path, parse_qs(url.query), body)
        data = json.dumps(answer).encode() if answer is not None else b""
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _route(self, method: str, path: str, query, body) -> tuple[int, Any]:
        if path == "/agent-api/v1/inbox":
            wait = min(float(query.get("wait", ["0"])[0]), 2.0)
            with self._changed:
                self._changed.wait_for(lambda: bool(self._handouts), wait)
                if self._handouts:
                    return 200, self._handouts.popleft()
            if self.inbox_status != 200:
                return self.inbox_status, {"error": {"code": "refused", "message": "no"}}
            return 204, None
        if path == "/agent-api/v1/heartbeat":
            return 204, None
        if path.startswith("/agent-api/v1/runs/") and path.endswith("/reply"):
            with self._changed:
                self.replies.append({"run": path.split("/")[4], **body})
                self._changed.notify_all()
            return 200, {"message_id": len(self.replies)}
        if path.startswith("/agent-api/v1/tools/"):
            return self.tool(path.rsplit("/", 1)[1], (body or {}).get("arguments"))
        if path == "/gateway/openai/v1/chat/completions":
            answer = self.model(body)
            return answer if isinstance(answer, tuple) else (200, answer)
        return 404, {"error": {"code": "not_found", "message": path}}
