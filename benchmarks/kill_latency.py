"""Kill switch latency on the local test droplet.

    ./dev bench kill_latency

For each of N agents running in real containers on the local engine of
scripts/droplets/up, one signed POST /webhooks/agent-kill/<id> goes through
the whole Django stack (middleware, URL routing, the webhook view), while two
watchers run beside it:
- token refused: a thread asks what the gateway asks (is this agent token
  active?) until the answer is no;
- container stopped: a thread inspects the container through the Docker SDK
  until it no longer runs.
Each time is measured from just before the request is sent; the response's
own time is shown too. p50/p95 over N kills.

It uses a throwaway SQLite database and removes every container it made.
"""

from __future__ import annotations

import hashlib
import hmac
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.deploy_latency import machine, percentile, setup_django  # noqa: E402

SECRET = "bench-operator-secret-" + "k" * 32


def main(count: int = 20) -> None:
    with tempfile.TemporaryDirectory() as folder:
        setup_django(Path(folder) / "bench.sqlite3")
        from droplets.tests.fixtures import _read_env_file

        run_benchmark(_read_env_file(), count)


def run_benchmark(env: dict[str, str], count: int) -> None:
    import docker
    from django.conf import settings

    from droplets.tests.fixtures import create_local_droplet
    from safer_claw.accounts.models import User

    settings.RUNTIME_IMAGE = env["SAFERCLAW_RUNTIME_IMAGE"]
    settings.KILL_SWITCH_SECRET = [SECRET]
    owner = User.objects.create_user("bench@example.com", "x")
    droplet = create_local_droplet(env, capacity=count, control_plane_url="")
    engine = docker.DockerClient(base_url=env["SAFERCLAW_D1_DOCKER_URL"])
    try:
        timings = measure(owner, droplet, engine, count)
    finally:
        # Only this run's containers: the engine is shared with test runs.
        mine = {"label": f"saferclaw.owner={owner.id}"}
        for container in engine.containers.list(all=True, filters=mine):
            container.remove(force=True)
        engine.close()

    print(f"machine: {machine()}")
    print(f"kills: {count} (local droplet, unix socket; SQLite; no Redis or Celery used)\n")
    print(f"{'request sent ->':34}{'p50 ms':>10}{'p95 ms':>10}")
    for label, key in (
        ("token refused", "token"),
        ("container stopped", "stopped"),
        ("response received", "response"),
    ):
        values = timings[key]
        print(
            f"{label:34}{percentile(values, 0.5) * 1000:>10.1f}"
            f"{percentile(values, 0.95) * 1000:>10.1f}"
        )
    print(
        "\ntoken refused: an agent token lookup (what the gateway does per call) first fails;"
        "\ncontainer stopped: docker inspect first reports it not running (SIGTERM, "
        f"SIGKILL after {settings.KILL_SWITCH_STOP_TIMEOUT_SECONDS} s);"
        "\nresponse received: the webhook's answer is back (token, state, stop, audit)."
    )


def measure(owner, droplet, engine, count: int) -> dict[str, list[float]]:
    from django.test import Client

    from agents.services import create_agent, deploy_agent
    from agents.tests.factories import paid

    client = Client()
    timings: dict[str, list[float]] = {"token": [], "stopped": [], "response": []}
    for i in range(count):
        agent = deploy_agent(agent=paid(create_agent(owner=owner, name=f"kill-{i}")))
        token = container_env(engine, agent.container_id)["AGENT_TOKEN"]
        token_refused = Watch(lambda token=token: token_is_refused(token))
        stopped = Watch(lambda cid=agent.container_id: not is_running(engine, cid))
        # Naming the agent binds the signature to it (and keeps two kills sent
        # in the same second from having the same signature).
        body = b'{"action": "stop", "agent_id": "%s"}' % str(agent.id).encode()
        started = time.perf_counter()
        response = client.post(
            f"/webhooks/agent-kill/{agent.id}",
            data=body,
            content_type="application/json",
            headers=signed(body),
        )
        answered = time.perf_counter() - started
        assert response.status_code == 200, response.content
        timings["response"].append(answered)
        timings["token"].append(token_refused.since(started))
        timings["stopped"].append(stopped.since(started))
    return timings


class Watch:
    """Polls ``condition`` in a thread until it holds.

    Polling starts (database connection open, first answer "not yet") before
    the request is sent, so the watcher's own set-up is not measured.
    """

    def __init__(self, condition) -> None:
        self.condition = condition
        self.held_at: float | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait()

    def _run(self) -> None:
        from django.db import connection

        try:
            assert not self.condition(), "the watched condition held before the kill"
            self.ready.set()
            while not self.condition():
                time.sleep(0.0005)
            self.held_at = time.perf_counter()
        finally:
            self.ready.set()
            connection.close()

    def since(self, started: float) -> float:
        self.thread.join(timeout=60)
        assert self.held_at is not None, "the watched condition never held"
        return self.held_at - started


def token_is_refused(token: str) -> bool:
    from agents.tokens import token_agent

    return token_agent(token) is None


def is_running(engine, container_id: str) -> bool:
    return engine.api.inspect_container(container_id)["State"]["Running"]


def container_env(engine, container_id: str) -> dict[str, str]:
    env = engine.api.inspect_container(container_id)["Config"]["Env"]
    return dict(item.split("=", 1) for item in env)


def signed(body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    digest = hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return {
        "X-SaferClaw-Timestamp": timestamp,
        "X-SaferClaw-Signature": f"v1={digest.hexdigest()}",
    }


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
