"""The tests' fake providers: OpenAI's and Anthropic's model APIs on a local server.

One small threaded HTTP/1.1 server on 127.0.0.1 answers both providers in their real
wire format (``gateway/provider_standin.py``):

- ``POST {base}/v1/chat/completions``: OpenAI Chat Completions (``fake.openai_base`` is
  ``{base}/v1``, what ``OPENAI_UPSTREAM_URL`` and ``openai.OpenAI(base_url=...)`` take);
- ``POST {base}/v1/messages``: Anthropic Messages (``fake.anthropic_base`` is ``{base}``).

Each test scripts what the "provider" answers with a FIFO of ``Reply`` objects
(``fake.enqueue(Reply(...))``); an empty queue answers ``Reply()``. A refused request
consumes no reply. Every request, refused or not, is recorded in ``fake.requests``.
``fake.on_request``, if set, is called with each request before it is answered: a
test's look at the world at the moment the provider sees a call. Streams are sent as
chunked SSE, one event per chunk, written as it goes.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gateway.provider_standin import Planned, Reply, apply_faults, provider_for, refuse, render


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    json: Any  # None when the body is not JSON
    body: bytes


class FakeProviders:
    """Both providers on one threaded HTTP/1.1 server at ``base_url``."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.on_request: Callable[[RecordedRequest], None] | None = None
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-providers", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def openai_base(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def anthropic_base(self) -> str:
        return self.base_url

    def start(self) -> FakeProviders:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # wakes handlers still waiting out a scripted delay
        self._server.shutdown()
        self._server.server_close()

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self._replies.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._replies.clear()
            self.requests.clear()
            self.on_request = None

    def take_reply(self) -> Reply:
        with self._lock:
            return self._replies.popleft() if self._replies else Reply()

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)


class _Server(ThreadingHTTPServer):
    fake: FakeProviders

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (a timeout test, a dropped keep-alive) is not a fault.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``fake.requests`` instead."""

    def _serve(self) -> None:
        fake = self.server.fake
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        request = RecordedRequest(self.command, self.path, headers, payload, body)
        fake.record(request)
        if fake.on_request is not None:
            fake.on_request(request)
        planned = refuse(self.command, self.path, headers, body)
        reply = Reply()
        if planned is None:
            reply = fake.take_reply()
            planned = render(self.path, headers, payload, reply)
            planned = apply_faults(planned, reply, provider_for(self.path) or "")
        self._send(planned, reply, fake.stopping)

    def _send(self, planned: Planned, reply: Reply, stopping: threading.Event) -> None:
        if reply.delay_before_headers_s and stopping.wait(reply.delay_before_headers_s):
            return
        self.send_response(planned.status)
        for name, value in planned.headers:
            self.send_header(name, value)
        if planned.streamed:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for frame in planned.frames:
            if planned.streamed:
                if reply.chunk_delay_s and stopping.wait(reply.chunk_delay_s):
                    return
                frame = b"%x\r\n%s\r\n" % (len(frame), frame)
            self.wfile.write(frame)
            self.wfile.flush()
        if planned.abort:
            self.close_connection = True  # no terminating chunk: the body ends unfinished
        elif planned.streamed:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()


@pytest.fixture(scope="session")
def fake_provider_server() -> Iterator[FakeProviders]:
    """The fake providers' server, started once per test session."""
    fake = FakeProviders().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_providers(fake_provider_server: FakeProviders, settings: Any) -> Iterator[FakeProviders]:
    """The fake providers with an empty reply queue and request log; the gateway points at them."""
    fake_provider_server.reset()
    settings.OPENAI_UPSTREAM_URL = fake_provider_server.openai_base
    settings.ANTHROPIC_UPSTREAM_URL = fake_provider_server.anthropic_base
    yield fake_provider_server
    fake_provider_server.reset()
