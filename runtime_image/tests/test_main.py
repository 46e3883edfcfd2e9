"""Tests for the agent runtime. No Docker needed: a local http.server stands in
for the control plane, and the runtime runs as a real subprocess for signals."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

MAIN_PY = Path(__file__).resolve().parent.parent / "agent_runtime" / "main.py"
TOKEN = "sc-test-token-3f9a1c"


def _load_main() -> ModuleType:
    # Loaded by path: the runtime is not a package of the control plane.
    spec = importlib.util.spec_from_file_location("saferclaw_agent_runtime_main", MAIN_PY)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolves string annotations through sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


runtime = _load_main()


class FakeControlPlane:
    """Records every request; answers with ``status`` (200 unless changed)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, object]] = []
        self.status = 200
        self.got_request = threading.Event()
        plane = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                plane.requests.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers.items()),
                        "body": self.rfile.read(length),
                    }
                )
                plane.got_request.set()
                self.send_response(plane.status)
                if 300 <= plane.status < 400:
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeControlPlane:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def control_plane() -> Iterator[FakeControlPlane]:
    with FakeControlPlane() as plane:
        yield plane


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _config(url: str, **overrides: object) -> object:
    values: dict[str, object] = {
        "control_plane_url": url,
        "agent_token": TOKEN,
        "http_timeout": 2.0,
    }
    values.update(overrides)
    return runtime.Config(**values)


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_heartbeat_posts_alive_with_bearer_token_and_never_logs_it(
    control_plane: FakeControlPlane,
) -> None:
    out = io.StringIO()
    log = runtime.JsonLogger(out, secrets=[TOKEN])

    assert runtime.send_heartbeat(_config(control_plane.url), log) is True

    [request] = control_plane.requests
    assert request["path"] == "/agent-api/v1/heartbeat"
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["Content-Type"] == "application/json"
    assert json.loads(request["body"]) == {"status": "alive"}
    [line] = _json_lines(out.getvalue())
    assert line["event"] == "heartbeat_ok"
    assert line["level"] == "info"
    assert "ts" in line
    assert TOKEN not in out.getvalue()


def test_rejected_and_unreachable_heartbeats_are_logged_not_raised(
    control_plane: FakeControlPlane,
) -> None:
    out = io.StringIO()
    log = runtime.JsonLogger(out, secrets=[TOKEN])
    control_plane.status = 401

    assert runtime.send_heartbeat(_config(control_plane.url), log) is False
    assert runtime.send_heartbeat(_config(_closed_port_url()), log) is False

    events = [(line["event"], line.get("status")) for line in _json_lines(out.getvalue())]
    assert events == [("heartbeat_rejected", 401), ("heartbeat_failed", None)]
    assert TOKEN not in out.getvalue()


def test_redirects_are_not_followed_so_the_token_stays_with_the_control_plane(
    control_plane: FakeControlPlane,
) -> None:
    out = io.StringIO()
    control_plane.status = 307

    assert runtime.send_heartbeat(_config(control_plane.url), runtime.JsonLogger(out)) is False

    assert len(control_plane.requests) == 1
    assert _json_lines(out.getvalue())[0]["status"] == 307


def test_logger_redacts_a_secret_that_reaches_a_field() -> None:
    out = io.StringIO()
    runtime.JsonLogger(out, secrets=[TOKEN]).log(
        "error", "oops", detail=f"header was Bearer {TOKEN}"
    )
    assert TOKEN not in out.getvalue()
    assert _json_lines(out.getvalue())[0]["detail"] == "header was Bearer [redacted]"


def test_config_errors_never_echo_the_token() -> None:
    with pytest.raises(runtime.ConfigError) as excinfo:
        runtime.Config.from_env({"CONTROL_PLANE_URL": "http://cp", "AGENT_TOKEN": "bad token"})
    assert "bad token" not in str(excinfo.value)
    with pytest.raises(runtime.ConfigError):
        runtime.Config.from_env({"CONTROL_PLANE_URL": "ftp://cp", "AGENT_TOKEN": TOKEN})
    with pytest.raises(runtime.ConfigError):
        runtime.Config.from_env(
            {"CONTROL_PLANE_URL": "http://cp", "AGENT_TOKEN": TOKEN, "HEARTBEAT_INTERVAL": "0"}
        )
    assert TOKEN not in repr(
        runtime.Config.from_env({"CONTROL_PLANE_URL": "http://cp", "AGENT_TOKEN": TOKEN})
    )


def test_health_check_passes_on_a_fresh_file_and_fails_on_stale_or_missing(tmp_path: Path) -> None:
    health = tmp_path / "health"
    out = io.StringIO()
    assert runtime.check_health(str(health), 30, out) == 1
    runtime.write_health_file(str(health))
    assert runtime.check_health(str(health), 30, out) == 0
    old = time.time() - 120
    os.utime(health, (old, old))
    assert runtime.check_health(str(health), 30, out) == 1


def _start_runtime(url: str, tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    child_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CONTROL_PLANE_URL": url,
        "AGENT_TOKEN": TOKEN,
        "HEARTBEAT_INTERVAL": "0.2",
        "HTTP_TIMEOUT": "1",
        "HEALTH_FILE": str(tmp_path / "health"),
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-u", str(MAIN_PY)],
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_runtime_heartbeats_then_exits_zero_promptly_on_sigterm(
    control_plane: FakeControlPlane, tmp_path: Path
) -> None:
    proc = _start_runtime(control_plane.url, tmp_path)
    try:
        _wait_for(lambda: len(control_plane.requests) >= 2)
        _wait_for((tmp_path / "health").exists)
        healthcheck = subprocess.run(
            [sys.executable, str(MAIN_PY), "--healthcheck"],
            env={"HEALTH_FILE": str(tmp_path / "health")},
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert healthcheck.returncode == 0, healthcheck.stdout

        sent_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=5)
        assert time.monotonic() - sent_at < 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 0, stderr
    assert stderr == ""
    lines = _json_lines(stdout)
    events = [line["event"] for line in lines]
    assert events[0] == "starting"
    assert events[-1] == "stopping"
    assert lines[-1]["reason"] == "SIGTERM"
    assert "heartbeat_ok" in events
    assert all({"ts", "level", "event"} <= line.keys() for line in lines)
    assert TOKEN not in stdout
    assert not (tmp_path / "health").exists()
    auth = {request["headers"]["Authorization"] for request in control_plane.requests}
    assert auth == {f"Bearer {TOKEN}"}


def test_runtime_keeps_running_while_control_plane_is_unreachable(tmp_path: Path) -> None:
    proc = _start_runtime(_closed_port_url(), tmp_path)
    try:
        _wait_for((tmp_path / "health").exists)
        time.sleep(1.0)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 0
    events = [line["event"] for line in _json_lines(stdout)]
    assert events.count("heartbeat_failed") >= 2
    assert events[-1] == "stopping"
    assert TOKEN not in stdout


def test_runtime_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    proc = _start_runtime("http://127.0.0.1:9", tmp_path, AGENT_TOKEN="")
    stdout, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 2
    assert stderr == ""
    [line] = _json_lines(stdout)
    assert line["event"] == "config_error"
    assert line["level"] == "error"
