"""Time from a Stripe webhook's arrival to the agent's container running.

    ./dev bench webhook_to_running [RUNS]      (default 10 runs per droplet)

The whole production path, each part a real process: the app served by
uvicorn receives a signed ``checkout.session.completed`` at /webhooks/stripe
(signature check, event stored, agent to `provisioning`, commit, deploy
queued on Redis), a Celery worker picks the deploy up (placement, token,
hardened container created and started on a test droplet, agent `running`).
Stripe itself is the local stand-in of billing/tests/fake_stripe.py; the
droplets are the two engines of scripts/droplets/up.

Each run: a checkout is opened for a new agent (not timed), Stripe's event
is signed, then the clock starts as the POST is sent and stops when the
agent's row reads `running` (polled every 5 ms; the container is then checked
to be running). Reported: p50/p95 of that, of the webhook's own response, and
of the queue + deploy part (from the `provisioning` to the `running` event).
A browser on the agent's page polls once a second, so a person sees
`running` up to a second after these times.

Needs Redis: BENCH_REDIS_URL, default redis://127.0.0.1:6379/7, a database of
its own whose Celery queue it empties first. Uses a throwaway SQLite database
and removes every container it made.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.deploy_latency import machine, percentile  # noqa: E402

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setup_django(database: Path) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="safer_claw.settings_test",
        DATABASE_URL=f"sqlite:///{database}",
        REDIS_URL=REDIS_URL,
        LOG_LEVEL="WARNING",
    )
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def service_env(fake, droplet_env: dict[str, str], port: int) -> dict[str, str]:
    """The environment of the web server and the worker: production settings."""
    return {
        **os.environ,  # settings_test put SECRET_KEY and ENCRYPTION_KEYS in it
        "DJANGO_SETTINGS_MODULE": "safer_claw.settings",
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "false",
        "STRIPE_SECRET_KEY": fake.api_key,
        "STRIPE_WEBHOOK_SECRET": fake.webhook_secret,
        "STRIPE_API_BASE": fake.url,
        "RUNTIME_IMAGE": droplet_env["SAFERCLAW_RUNTIME_IMAGE"],
        "CONTROL_PLANE_URL": f"http://127.0.0.1:{port}",
    }


@contextmanager
def services(env: dict[str, str], port: int, logs: Path):
    """uvicorn and a Celery worker, as `./dev run` starts them, until the block ends."""
    from safer_claw.celery import app as celery_app

    celery_app.control.purge()
    python = sys.executable
    commands = {
        "web": [
            python, "-m", "uvicorn", "safer_claw.asgi:application", "--host", "127.0.0.1",
            "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
        ],
        "worker": [
            python, "-m", "celery", "-A", "safer_claw", "worker", "--concurrency=2",
            "--loglevel=WARNING", "--without-gossip", "--without-mingle",
        ],
    }  # fmt: skip
    running = {
        name: subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=(logs / f"{name}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for name, argv in commands.items()
    }
    try:
        wait_until(lambda: _answers(port), "the web server")
        wait_until(lambda: bool(celery_app.control.ping(timeout=0.5)), "the Celery worker")
        yield
    finally:
        for process in running.values():
            process.terminate()
        for process in running.values():
            process.wait(timeout=30)


def _answers(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        connection.request("GET", "/webhooks/stripe")
        return connection.getresponse().status == 405
    except OSError:
        return False


def wait_until(ready, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not come up in {timeout:.0f} s")
        time.sleep(0.1)


def post(url: str, body: str, signature: str) -> int:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.request(
        "POST",
        parts.path,
        body=body.encode(),
        headers={"Content-Type": "application/json", "Stripe-Signature": signature},
    )
    response = connection.getresponse()
    response.read()
    return response.status


def one_run(fake, owner, plan, name: str, webhook_url: str) -> dict[str, float]:
    from agents.models import Agent, AgentStatus
    from billing.tests.fake_stripe import sign
    from billing.tests.helpers import checkout
    from droplets.containers import container_state

    subscription = checkout(owner, plan, name)
    payload = json.dumps(fake.complete_checkout(subscription.stripe_checkout_session_id))
    signature = sign(payload, fake.webhook_secret)
    running = Agent.objects.filter(pk=subscription.agent_id, status=AgentStatus.RUNNING)

    started = time.perf_counter()
    status = post(webhook_url, payload, signature)
    answered = time.perf_counter()
    while not running.exists():
        if time.perf_counter() - started > 120:
            raise SystemExit(f"agent {name} not running after 120 s: see the logs")
        time.sleep(0.005)
    done = time.perf_counter()

    assert status == 200, status
    agent = running.get()
    assert container_state(agent.droplet, agent.container_id).running
    provisioning, ran = (
        agent.events.filter(to_status=s).get().created_at
        for s in (AgentStatus.PROVISIONING, AgentStatus.RUNNING)
    )
    # The worker issues the agent's token right after it has placed the agent.
    placed = agent.tokens.earliest("created_at").created_at
    return {
        "total": done - started,
        "response": answered - started,
        "queue+deploy": (ran - provisioning).total_seconds(),
        "  queue+placement": (placed - provisioning).total_seconds(),
        "  container start": (ran - placed).total_seconds(),
    }


def main(runs: int = 10) -> None:
    with tempfile.TemporaryDirectory() as folder:
        setup_django(Path(folder) / "bench.sqlite3")
        from droplets.tests.fixtures import _read_env_file

        run_benchmark(_read_env_file(), runs, Path(folder))


def run_benchmark(droplet_env: dict[str, str], runs: int, folder: Path) -> None:
    from agents.models import Agent
    from agents.services import delete_agent
    from billing.models import Plan
    from billing.tests.fake_stripe import FakeStripe
    from droplets.models import Droplet
    from droplets.tests.fixtures import create_local_droplet, create_tls_droplet
    from safer_claw.accounts.models import User

    port = free_port()
    owner = User.objects.create_user("bench@example.com", "x")
    plan = Plan.objects.create(name="Bench", stripe_price_id="price_bench", max_agents=1000)
    local = create_local_droplet(droplet_env, capacity=runs + 1, control_plane_url="")
    tls = create_tls_droplet(droplet_env, capacity=runs + 1, control_plane_url="")
    print(f"machine: {machine()}")
    print(f"broker: {REDIS_URL}; {runs} runs per droplet after one untimed warm-up\n")
    print(f"{'webhook -> running':34}{'p50 ms':>10}{'p95 ms':>10}{'min ms':>10}{'max ms':>10}")
    with FakeStripe() as fake:
        fake.add_price("price_bench")
        from django.conf import settings

        settings.STRIPE_SECRET_KEY = fake.api_key
        settings.STRIPE_WEBHOOK_SECRET = fake.webhook_secret
        settings.STRIPE_API_BASE = fake.url
        settings.RUNTIME_IMAGE = droplet_env["SAFERCLAW_RUNTIME_IMAGE"]
        env = service_env(fake, droplet_env, port)
        webhook_url = f"http://127.0.0.1:{port}/webhooks/stripe"
        try:
            with services(env, port, folder):
                for droplet, other, label in (
                    (local, tls, "unix socket"),
                    (tls, local, "mutual TLS"),
                ):
                    Droplet.objects.filter(pk=other.pk).update(status="maintenance")
                    Droplet.objects.filter(pk=droplet.pk).update(status="active")
                    one_run(fake, owner, plan, f"{droplet.name}-warm-up", webhook_url)
                    timings = [
                        one_run(fake, owner, plan, f"{droplet.name}-{i}", webhook_url)
                        for i in range(runs)
                    ]
                    for part in timings[0]:
                        values = [t[part] for t in timings]
                        name = f"{part} ({label})"
                        print(
                            f"{name:34}{percentile(values, 0.5) * 1000:>10.1f}"
                            f"{percentile(values, 0.95) * 1000:>10.1f}"
                            f"{min(values) * 1000:>10.1f}{max(values) * 1000:>10.1f}"
                        )
        finally:
            for agent in Agent.objects.exclude(status="deleted"):
                delete_agent(agent=agent, source="operator")
    print(
        "\ntotal: POST sent -> agent row `running` (container started);"
        "\nresponse: the webhook's 200;"
        "\nqueue+deploy: `provisioning` event (webhook commit) -> `running` event (worker),"
        "\n  split at the token the worker issues once it has placed the agent."
        "\nA browser on the agent's page polls every second: it shows `running` within"
        "\na second after `total`."
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
