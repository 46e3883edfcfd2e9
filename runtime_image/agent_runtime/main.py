"""Safer-Claw agent runtime: the program that runs inside each agent container.

This is the placeholder for the agent loop. It only proves the plumbing that the
real loop will rely on:

* configuration comes from the environment (``CONTROL_PLANE_URL``,
  ``AGENT_TOKEN``, optional ``HEARTBEAT_INTERVAL``, ``HTTP_TIMEOUT``,
  ``HEALTH_FILE``, ``HEALTH_MAX_AGE``);
* every ``HEARTBEAT_INTERVAL`` seconds it POSTs ``{"status": "alive"}`` to
  ``$CONTROL_PLANE_URL/agent-api/v1/heartbeat`` with the agent token as a
  bearer token; a failed heartbeat is logged and retried next interval;
* it keeps a heartbeat file fresh under ``/tmp`` (the only writable place in a
  read-only container) that ``main.py --healthcheck`` checks for Docker's
  HEALTHCHECK;
* it logs one JSON object per line on stdout and never logs the token;
* it exits 0 promptly on SIGTERM/SIGINT.

Standard library only, and nothing from the control plane: the container talks
to the control plane over HTTP and nothing else.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

HEARTBEAT_PATH = "/agent-api/v1/heartbeat"
HEARTBEAT_BODY = b'{"status": "alive"}'
USER_AGENT = "saferclaw-agent-runtime/0.1"
# /tmp: the only writable place in the hardened container (a private tmpfs).
DEFAULT_HEALTH_FILE = "/tmp/agent-runtime.health"  # noqa: S108
# The heartbeat file is refreshed at least this often, independently of the
# (possibly long) heartbeat interval, so the health check can use a short max age.
HEALTH_REFRESH_SECONDS = 5.0
DEFAULT_HEALTH_MAX_AGE = 30.0

EXIT_OK = 0
EXIT_UNHEALTHY = 1
EXIT_CONFIG_ERROR = 2


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
    heartbeat_interval: float = 30.0
    http_timeout: float = 5.0
    health_file: str = DEFAULT_HEALTH_FILE

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        """Build a Config from ``env``; raise ConfigError (never echoing the token)."""
        url = env.get("CONTROL_PLANE_URL", "").strip()
        if not url:
            raise ConfigError("CONTROL_PLANE_URL is not set")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("CONTROL_PLANE_URL must be an http:// or https:// URL")
        token = env.get("AGENT_TOKEN", "")
        if not token:
            raise ConfigError("AGENT_TOKEN is not set")
        # A token with whitespace or control characters would corrupt the header.
        if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in token):
            raise ConfigError("AGENT_TOKEN contains whitespace or control characters")
        return cls(
            control_plane_url=url.rstrip("/"),
            agent_token=token,
            heartbeat_interval=_positive_float(env, "HEARTBEAT_INTERVAL", 30.0),
            http_timeout=_positive_float(env, "HTTP_TIMEOUT", 5.0),
            health_file=env.get("HEALTH_FILE", "").strip() or DEFAULT_HEALTH_FILE,
        )

    @property
    def heartbeat_url(self) -> str:
        return self.control_plane_url + HEARTBEAT_PATH

    @property
    def safe_control_plane_url(self) -> str:
        """The control plane URL without any userinfo, fit for a log line."""
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


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: following one would resend the bearer token elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# No proxies from the environment either: the token goes to the control plane only.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        reason = exc.reason
        return (
            f"{type(reason).__name__}: {reason}"
            if isinstance(reason, BaseException)
            else str(reason)
        )
    return f"{type(exc).__name__}: {exc}"


def send_heartbeat(config: Config, log: JsonLogger) -> bool:
    """POST one heartbeat; log the outcome; return True on a 2xx answer. Never raises
    for network or HTTP errors."""
    # The scheme was checked to be http(s) in Config.from_env.
    request = urllib.request.Request(  # noqa: S310
        config.heartbeat_url,
        data=HEARTBEAT_BODY,
        method="POST",
        headers={
            "Authorization": f"Bearer {config.agent_token}",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        },
    )
    started = time.monotonic()
    try:
        with _opener.open(request, timeout=config.http_timeout) as response:
            status = response.status
            response.read(65536)
    except urllib.error.HTTPError as exc:
        # 401/403 mean the token was revoked; the real loop will act on it.
        log.log("warning", "heartbeat_rejected", status=exc.code)
        return False
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        log.log("warning", "heartbeat_failed", error=_describe_error(exc))
        return False
    elapsed_ms = round((time.monotonic() - started) * 1000)
    log.log("info", "heartbeat_ok", status=status, elapsed_ms=elapsed_ms)
    return True


def write_health_file(path: str) -> None:
    """Atomically replace the heartbeat file; its mtime is what the check reads."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"ts": time.time(), "pid": os.getpid()}, handle)
    os.replace(tmp, path)


def check_health(path: str, max_age: float, stream: TextIO) -> int:
    """Docker HEALTHCHECK: 0 if the heartbeat file is younger than ``max_age``."""
    try:
        age = time.time() - os.stat(path).st_mtime
    except OSError as exc:
        stream.write(f"unhealthy: no heartbeat file ({exc.strerror})\n")
        return EXIT_UNHEALTHY
    if age > max_age:
        stream.write(f"unhealthy: heartbeat file is {age:.0f}s old (max {max_age:.0f}s)\n")
        return EXIT_UNHEALTHY
    stream.write(f"healthy: heartbeat {age:.1f}s ago\n")
    return EXIT_OK


def run(config: Config, log: JsonLogger, stop: threading.Event, stop_reason: list[str]) -> int:
    """The main loop: refresh the health file, send heartbeats, until ``stop`` is set."""
    log.log(
        "info",
        "starting",
        control_plane=config.safe_control_plane_url,
        heartbeat_interval=config.heartbeat_interval,
        pid=os.getpid(),
    )
    health_ok = True
    refresh = min(HEALTH_REFRESH_SECONDS, config.heartbeat_interval)
    next_heartbeat = time.monotonic()
    while not stop.is_set():
        try:
            write_health_file(config.health_file)
            if not health_ok:
                log.log("info", "health_file_ok", path=config.health_file)
            health_ok = True
        except OSError as exc:
            # Log only the transition, not every tick.
            if health_ok:
                log.log("error", "health_file_failed", path=config.health_file, error=str(exc))
            health_ok = False
        if time.monotonic() >= next_heartbeat:
            send_heartbeat(config, log)
            # Scheduled from the end of the attempt, so a slow control plane
            # never causes a burst of back-to-back heartbeats.
            next_heartbeat = time.monotonic() + config.heartbeat_interval
        stop.wait(max(0.0, min(refresh, next_heartbeat - time.monotonic())))
    log.log("info", "stopping", reason=stop_reason[0] if stop_reason else "stop requested")
    with contextlib.suppress(OSError):
        os.unlink(config.health_file)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--healthcheck"]:
        health_file = os.environ.get("HEALTH_FILE", "").strip() or DEFAULT_HEALTH_FILE
        try:
            max_age = _positive_float(os.environ, "HEALTH_MAX_AGE", DEFAULT_HEALTH_MAX_AGE)
        except ConfigError as exc:
            sys.stdout.write(f"unhealthy: {exc}\n")
            return EXIT_UNHEALTHY
        return check_health(health_file, max_age, sys.stdout)
    if args:
        sys.stderr.write("usage: main.py [--healthcheck]\n")
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
        # already in progress. The loop logs the reason once it wakes.
        stop_reason.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return run(config, log, stop, stop_reason)


if __name__ == "__main__":
    sys.exit(main())
