"""The runtime as a process: configuration, logs, the poll/run/reply cycle, and
SIGTERM that exits at once even mid-request. No Docker: a local stand-in control
plane (fake_control_plane.py), the runtime as a real subprocess."""

from __future__ import annotations

import ast
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
from pathlib import Path

import pytest

from runtime_image.agent_runtime import main as runtime
from runtime_image.tests.fake_control_plane import FakeControlPlane, completion, handout

RUNTIME_DIR = Path(__file__).resolve().parent.parent
PACKAGE = RUNTIME_DIR / "agent_runtime"
TOKEN = "sca_test-token-3f9a1c"


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def start(url: str, **env: str) -> subprocess.Popen[str]:
    child_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CONTROL_PLANE_URL": url,
        "AGENT_TOKEN": TOKEN,
        "INBOX_WAIT": "1",
        "HTTP_TIMEOUT": "2",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-s", "-m", "agent_runtime"],
        cwd=RUNTIME_DIR,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen[str]) -> tuple[str, str, float]:
    """SIGTERM; returns stdout, stderr and how long the exit took."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out, err, time.monotonic() - sent


@pytest.fixture
def plane() -> Iterator[FakeControlPlane]:
    with FakeControlPlane() as fake:
        yield fake


def test_the_runtime_polls_runs_and_replies_once(plane):
    answers = iter([completion(tool_calls=[("time__now", {})]), completion("It is noon.")])
    plane.model = lambda body: next(answers)
    proc = start(plane.url)
    try:
        plane.hand_out(handout("What time is it?", run_id="11111111-1111-4111-8111-111111111111"))
        plane.wait_for(lambda: len(plane.replies) == 1)
        time.sleep(0.5)  # and nothing more: one reply per run
    finally:
        out, err, _took = stop(proc)
    assert proc.returncode == 0, err
    assert err == ""
    [reply] = plane.replies
    assert reply == {
        "run": "11111111-1111-4111-8111-111111111111",
        "content": "It is noon.",
        "stop_reason": "completed",
        "model_steps": 2,
        "tool_calls": 1,
    }
    assert {s.headers["Authorization"] for s in plane.requests} == {f"Bearer {TOKEN}"}
    events = [line["event"] for line in json_lines(out)]
    assert events[0] == "starting"
    assert events[-1] == "stopping"
    assert {"run_started", "model_call", "tool_call", "run_finished", "reply_stored"} <= set(events)
    assert TOKEN not in out
    assert "What time is it?" not in out
    assert "It is noon." not in out


def test_sigterm_mid_request_exits_at_once_even_if_nobody_answers():
    """A control plane behind a firewall that drops packets never answers: exit anyway."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts connections (the kernel does), never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        proc = start(url, INBOX_WAIT="25", HTTP_TIMEOUT="30")
        time.sleep(1.0)  # the poll is open and waiting
        assert proc.poll() is None
        out, err, took = stop(proc)
    assert proc.returncode == 0, err
    assert took < 2.0, f"took {took:.2f}s"
    lines = json_lines(out)
    assert lines[-1]["event"] == "stopping"
    assert lines[-1]["reason"] == "SIGTERM"


def test_an_unreachable_control_plane_is_retried_with_backoff(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    proc = start(f"http://127.0.0.1:{closed}")
    time.sleep(2.5)
    out, _, _ = stop(proc)
    failures = [line for line in json_lines(out) if line["event"] == "inbox_failed"]
    assert 2 <= len(failures) <= 3  # 1 s, then 2 s: not a busy loop
    assert [f["retry_in_s"] for f in failures[:2]] == [1.0, 2.0]
    assert proc.returncode == 0


def test_a_refused_token_pauses_polling(plane):
    plane.inbox_status = 401
    proc = start(plane.url)
    time.sleep(1.5)
    out, _, _ = stop(proc)
    assert len(plane.paths("/agent-api/v1/inbox")) == 1
    refused = next(line for line in json_lines(out) if line["event"] == "inbox_refused")
    assert (refused["status"], refused["retry_in_s"]) == (401, 30.0)


def test_the_runtime_refuses_to_start_without_a_token():
    proc = start("http://127.0.0.1:9", AGENT_TOKEN="")
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 2
    assert err == ""
    [line] = json_lines(out)
    assert (line["event"], line["level"]) == ("config_error", "error")


def test_config_errors_never_echo_the_token():
    with pytest.raises(runtime.ConfigError) as excinfo:
        runtime.Config.from_env({"CONTROL_PLANE_URL": "http://cp", "AGENT_TOKEN": "bad token"})
    assert "bad token" not in str(excinfo.value)
    for url in ("ftp://cp", "http://user:pw@cp", "http://cp/?x=1"):
        with pytest.raises(runtime.ConfigError):
            runtime.Config.from_env({"CONTROL_PLANE_URL": url, "AGENT_TOKEN": TOKEN})
    config = runtime.Config.from_env({"CONTROL_PLANE_URL": "http://cp/", "AGENT_TOKEN": TOKEN})
    assert TOKEN not in repr(config)
    assert config.inbox_wait == 25


def test_logger_redacts_a_secret_that_reaches_a_field():
    out = io.StringIO()
    runtime.JsonLogger(out, secrets=[TOKEN]).log("error", "oops", detail=f"Bearer {TOKEN}")
    assert TOKEN not in out.getvalue()
    assert json_lines(out.getvalue())[0]["detail"] == "Bearer [redacted]"


def test_a_redirect_is_not_followed(plane):
    """http.client follows nothing: the token never goes where a redirect points."""
    elsewhere = FakeControlPlane()
    with elsewhere:
        plane._route = lambda method, path, query, body: (307, None)
        from runtime_image.agent_runtime.control_plane import ControlPlane

        answer = ControlPlane(plane.url, TOKEN).get("/agent-api/v1/inbox", timeout=2)
    assert answer.status == 307
    assert elsewhere.requests == []


def test_the_runtime_imports_only_the_standard_library():
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: the runtime's own modules
                    continue
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top == "__future__", (path.name, name)


def test_the_heartbeat_runs_only_while_a_run_is_in_progress(plane):
    release = threading.Event()

    def slow_model(body):
        release.wait(5)
        return completion("done")

    plane.model = slow_model
    proc = start(plane.url, HEARTBEAT_INTERVAL="0.3")
    try:
        time.sleep(1.0)
        assert plane.paths("/agent-api/v1/heartbeat") == []  # idle: polls only
        plane.hand_out(handout("slow"))
        plane.wait_for(lambda: len(plane.paths("/agent-api/v1/heartbeat")) >= 2)
        release.set()
        plane.wait_for(lambda: len(plane.replies) == 1)
        beats = len(plane.paths("/agent-api/v1/heartbeat"))
        time.sleep(1.0)
        assert len(plane.paths("/agent-api/v1/heartbeat")) <= beats + 1
    finally:
        release.set()
        stop(proc)
