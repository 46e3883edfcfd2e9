"""HTTP to the control plane, the only place the runtime talks to.

One small client on ``http.client``: a fresh connection per request (the long
poll holds one open anyway, and a connection never outlives a request that
failed), no redirects followed and no proxy variables read, so the agent's
token goes to the control plane and nowhere else. Answers are read up to a
size limit: nothing the other side sends can fill the container's memory.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

USER_AGENT = "saferclaw-agent-runtime/1.0"
MAX_RESPONSE_BYTES = 4 * 1024 * 1024


class Unreachable(Exception):
    """No answer: refused, timed out, reset, or cut short."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any  # the JSON answer, or None when there was none (204) or it was not JSON
    elapsed_ms: int = 0

    def error_code(self) -> str:
        """The ``code`` of our error shape (``{"error": {"code", "message"}}``), or ""."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return str(error.get("code") or "") if isinstance(error, dict) else ""

    def error_message(self) -> str:
        """The message of our error shape or a provider's, or a generic one."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
        return f"HTTP {self.status}"


@dataclass
class ControlPlane:
    base_url: str
    token: str = field(repr=False)
    _context: ssl.SSLContext | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        if self._https:
            self._context = ssl.create_default_context()

    def get(self, path: str, *, timeout: float) -> Answer:
        return self.request("GET", path, timeout=timeout)

    def post(
        self, path: str, body: Any, *, timeout: float, headers: dict[str, str] | None = None
    ) -> Answer:
        return self.request("POST", path, body=body, timeout=timeout, headers=headers)

    def request(
        self,
        method: str,
        path: str,
        *,
        timeout: float,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One request; raises Unreachable when no complete answer came in ``timeout`` s."""
        sent = {
            "Authorization": f"Bearer {self.token}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            **(headers or {}),
        }
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            sent["Content-Type"] = "application/json"
        started = time.monotonic()
        connection = self._connection(max(timeout, 0.1))
        try:
            connection.request(method, self._prefix + path, body=data, headers=sent)
            response = connection.getresponse()
            raw = response.read(MAX_RESPONSE_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(describe_error(exc)) from None
        finally:
            connection.close()
        if len(raw) > MAX_RESPONSE_BYTES:
            raise Unreachable(f"answer over {MAX_RESPONSE_BYTES} bytes")
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return Answer(response.status, parsed, round((time.monotonic() - started) * 1000))

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=self._context
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)


def describe_error(exc: BaseException) -> str:
    """A short, secret-free description of a network error for a log line."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        exc = reason
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]
