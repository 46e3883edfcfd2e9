"""Safer-Claw agent runtime: the program that runs inside each agent container.

It long-polls the control plane's inbox with its agent token, works on the
run it is handed (``loop.run_once``: model calls through the gateway, tool
calls through the control plane), posts the reply, and polls again. It opens
no port and keeps nothing: the control plane holds the conversation, so the
container can be replaced at any time.

Idle, it costs almost nothing: one thread blocked in the long poll's socket
read, one (the main thread) waiting for a signal; no health-check process, no
timer. Liveness is judged by the control plane from the polls themselves.

* Configuration from the environment: ``CONTROL_PLANE_URL``, ``AGENT_TOKEN``
  (required); ``INBOX_WAIT`` (25 s), ``HTTP_TIMEOUT`` (10 s), ``TOOL_TIMEOUT``
  (60 s), ``HEARTBEAT_INTERVAL`` (30 s, sent only while a run is in progress).
* One JSON object per line on stdout; never the token, never message content.
* SIGTERM/SIGINT: abandons whatever is in progress and exits 0 at once, even
  while a request to an unanswering control plane is open. A run abandoned
  that way is handed out again when the runtime comes back.

Standard library only, and nothing from the control plane.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

from .control_plane import ControlPlane, Unreachable
from .loop import run_once

EXIT_OK = 0
EXIT_CONFIG_ERROR = 2
INBOX_PATH = "/agent-api/v1/inbox"
HEARTBEAT_PATH = "/agent-api/v1/heartbeat"
# After a refusal: a revoked token (the container is about to be stopped), an
# agent that is not running. Network failures back off from 1 s to this.
REFUSED_PAUSE_SECONDS = 30.0
NOT_RUNNING_PAUSE_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 30.0
REPLY_ATTEMPTS = 3


class ConfigError(Exception):
    """The environment does not describe a usable runtime configuration."""


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


@dataclass(frozen=True)
class Config:
    """Runtime settings read once at start-up."""

    control_plane_url: str
    # repr=False keeps the token out of any accidental repr() in a log or traceback.
    agent_token: str = field(repr=False)
    inbox_wait: float = 25.0
    http_timeout: float = 10.0
    tool_timeout: float = 60.0
    heartbeat_interval: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        """Build a Config from ``env``; raise ConfigError (never echoing the token)."""
        url = env.get("CONTROL_PLANE_URL", "").strip()
        if not url:
            raise ConfigError("CONTROL_PLANE_URL is not set")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("CONTROL_PLANE_URL must be an http:// or https:// URL")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ConfigError("CONTROL_PLANE_URL must not carry credentials, a query or a fragment")
        token = env.get("AGENT_TOKEN", "")
        if not token:
            raise ConfigError("AGENT_TOKEN is not set")
        # A token with whitespace or control characters would corrupt the header.
        if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in token):
            raise ConfigError("AGENT_TOKEN contains whitespace or control characters")
        return cls(
            control_plane_url=url.rstrip("/"),
            agent_token=token,
            inbox_wait=min(_positive_float(env, "INBOX_WAIT", 25.0), 25.0),
            http_timeout=_positive_float(env, "HTTP_TIMEOUT", 10.0),
            tool_timeout=_positive_float(env, "TOOL_TIMEOUT", 60.0),
            heartbeat_interval=_positive_float(env, "HEARTBEAT_INTERVAL", 30.0),
        )

    @property
    def safe_control_plane_url(self) -> str:
        """The control plane URL, fit for a log line."""
        parts = urlsplit(self.control_plane_url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"


class JsonLogger:
    """Writes one JSON object per line: ``{"ts", "level", "event", ...}``.

    Every secret given at construction is replaced by ``[redacted]`` in the
    final line, as a last line of defence should one ever reach a log field.
    """

    def __init__(self, stream: TextIO, secrets: Sequence[str] = ()) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._secrets: list[str] = []
        for secret in secrets:
            if secret:
                # The JSON-escaped form differs from the raw one for some characters.
                self._secrets.extend({secret, json.dumps(secret)[1:-1]})

    def log(self, level: str, event: str, **fields: Any) -> None:
        record: dict[str, Any] = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": level,
            "event": event,
        }
        for key, value in fields.items():
            record.setdefault(key, value)
        line = json.dumps(record, default=str, separators=(",", ":"))
        for secret in self._secrets:
            line = line.replace(secret, "[redacted]")
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


class Heartbeat:
    """While a run is in progress (no poll is open), say every interval that we live."""

    def __init__(self, control_plane: ControlPlane, config: Config, log: JsonLogger) -> None:
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(control_plane, config, log), daemon=True, name="heartbeat"
        )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def _beat(self, control_plane: ControlPlane, config: Config, log: JsonLogger) -> None:
        while not self._done.wait(config.heartbeat_interval):
            try:
                control_plane.post(HEARTBEAT_PATH, {"status": "busy"}, timeout=config.http_timeout)
            except Unreachable as exc:
                log.log("warning", "heartbeat_failed", error=str(exc))


def serve(config: Config, log: JsonLogger, stop: threading.Event) -> None:
    """Poll the inbox and work on what it hands out, until ``stop`` is set."""
    control_plane = ControlPlane(config.control_plane_url, config.agent_token)
    failures = 0
    while not stop.is_set():
        try:
            answer = control_plane.get(
                f"{INBOX_PATH}?wait={config.inbox_wait:g}",
                timeout=config.inbox_wait + config.http_timeout,
            )
        except Unreachable as exc:
            failures += 1
            pause = min(MAX_BACKOFF_SECONDS, 2.0 ** (failures - 1))
            log.log("warning", "inbox_failed", error=str(exc), retry_in_s=pause)
            stop.wait(pause)
            continue
        failures = 0
        if answer.status == 204:
            continue
        if answer.status == 200 and isinstance(answer.body, dict):
            work_on(answer.body, control_plane, config, log)
            continue
        pause = {401: REFUSED_PAUSE_SECONDS, 409: NOT_RUNNING_PAUSE_SECONDS}.get(
            answer.status, MAX_BACKOFF_SECONDS
        )
        log.log(
            "warning",
            "inbox_refused",
            status=answer.status,
            code=answer.error_code(),
            retry_in_s=pause,
        )
        stop.wait(pause)


def work_on(handout: dict[str, Any], control_plane: ControlPlane, config: Config, log) -> None:
    """One handed-out run, from first model call to stored reply."""
    try:
        run_id = str(handout["run"]["id"])
    except (KeyError, TypeError):
        log.log("error", "bad_handout")
        return
    log.log("info", "run_started", run=run_id, handed_out=handout["run"].get("handed_out"))
    with Heartbeat(control_plane, config, log):
        try:
            outcome = run_once(handout, control_plane, log, tool_timeout=config.tool_timeout)
        except (KeyError, TypeError, ValueError) as exc:
            log.log("error", "bad_handout", run=run_id, error=type(exc).__name__)
            return
    log.log(
        "info",
        "run_finished",
        run=run_id,
        stop_reason=outcome.stop_reason,
        model_steps=outcome.model_steps,
        tool_calls=outcome.tool_calls,
    )
    if outcome.text is not None:
        post_reply(control_plane, config, log, run_id, outcome)


def post_reply(control_plane: ControlPlane, config: Config, log, run_id: str, outcome) -> None:
    """Post the reply; a retry is safe (the control plane stores it once)."""
    body = {
        # PostgreSQL stores no NUL character; a model may still produce one.
        "content": outcome.text.replace("\x00", "")[:32_000] or "(empty answer)",
        "stop_reason": outcome.stop_reason,
        "model_steps": outcome.model_steps,
        "tool_calls": outcome.tool_calls,
    }
    for attempt in range(REPLY_ATTEMPTS):
        try:
            answer = control_plane.post(
                f"/agent-api/v1/runs/{run_id}/reply", body, timeout=config.http_timeout
            )
        except Unreachable as exc:
            log.log("warning", "reply_failed", run=run_id, error=str(exc), attempt=attempt + 1)
            continue
        event = "reply_stored" if answer.status == 200 else "reply_refused"
        log.log("info", event, run=run_id, status=answer.status, code=answer.error_code())
        return


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args:
        sys.stderr.write("usage: python3 -m agent_runtime\n")
        return EXIT_CONFIG_ERROR
    log = JsonLogger(sys.stdout, secrets=[os.environ.get("AGENT_TOKEN", "")])
    try:
        config = Config.from_env(os.environ)
    except ConfigError as exc:
        log.log("error", "config_error", message=str(exc))
        return EXIT_CONFIG_ERROR

    stop = threading.Event()
    stop_reason: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        # No logging here: writing to stdout from a handler can re-enter a write
        # already in progress. The main thread logs once it wakes.
        stop_reason.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.log(
        "info",
        "starting",
        control_plane=config.safe_control_plane_url,
        inbox_wait=config.inbox_wait,
        pid=os.getpid(),
    )
    # The work happens in a daemon thread; the main thread only waits for the
    # stop signal, so a request the control plane never answers cannot delay it.
    worker = threading.Thread(target=serve, args=(config, log, stop), daemon=True, name="serve")
    worker.start()
    stop.wait()
    log.log("info", "stopping", reason=stop_reason[0] if stop_reason else "stop requested")
    return EXIT_OK


def run_and_exit() -> None:
    """Entry point: exit at once, abandoning the worker thread's step in progress."""
    code = main()
    sys.stdout.flush()
    os._exit(code)
