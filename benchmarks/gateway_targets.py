"""The servers the gateway benchmark calls, each started in its own process.

- the upstream stand-in (``benchmarks/upstream_standin.py`` under uvicorn);
- our gateway: ``safer_claw.asgi`` under uvicorn as in production (DEBUG off, PostgreSQL
  database ``gateway_bench`` made and dropped here on the server at ``BENCH_POSTGRES_URL``,
  default ``postgres://postgres@127.0.0.1:5432``; Redis db 7, flushed; the database and
  Redis can be set apart with ``BENCH_GATEWAY_DATABASE`` and ``BENCH_REDIS_URL``), with a running
  agent per provider, caps no run reaches, prices, and a token;
- a bare proxy (``benchmarks/bare_proxy.py`` under uvicorn): relaying alone, no metering;
- LiteLLM's proxy, from its own virtualenv in ``.bench-venv/litellm`` (created on first
  use: its pins would clash with ours), with a generated config, no database.

Each is a context manager that yields a :class:`Target` and stops what it started. A
target that cannot start yields ``down`` with the reason instead of raising, so one
broken server does not stop the others from being measured.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import redis

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
LITELLM_VERSION = "1.108.7"  # newest whose [proxy] extra resolves from PyPI as of writing
LITELLM_VENV = ROOT / ".bench-venv" / "litellm"
# Its own database and Redis database: set them apart when benchmarks run side by side.
DATABASE = os.environ.get("BENCH_GATEWAY_DATABASE", "gateway_bench")
POSTGRES = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
UPSTREAM_KEY = "sk-bench-upstream-provider-key"
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
GATEWAY_WORKERS = int(os.environ.get("BENCH_GATEWAY_WORKERS") or os.cpu_count() or 1)


@dataclass
class Target:
    """Where and how to send one provider's calls, or why the target is unavailable."""

    name: str
    urls: dict[str, str] = field(default_factory=dict)
    # Per provider, the headers of each caller (a worker uses its own, round robin).
    headers: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    down: str = ""
    # CPU seconds used so far by the target's own processes (for CPU per call), if known.
    cpu: Callable[[], float] | None = None


class StartFailed(Exception):
    pass


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def at_provider_paths(target: Target, base: str, key: str) -> Target:
    """``target`` serving each provider at the provider's own path under ``base``, with
    one key (the stand-in, and the proxies that speak the providers' paths)."""
    for provider, path in PATHS.items():
        target.urls[provider] = base + path
        target.headers[provider] = [auth_headers(provider, key)]
    return target


def auth_headers(provider: str, key: str) -> dict[str, str]:
    if provider == "openai":
        return {"Authorization": f"Bearer {key}"}
    return {"x-api-key": key, "anthropic-version": "2023-06-01"}


@contextmanager
def process(name: str, command: list[str], env: dict[str, str], logs: Path) -> Iterator[Path]:
    """Run ``command`` in its own session, logging to a file; stop it (and its children) after."""
    log_path = logs / f"{name}.log"
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    SESSIONS[name] = child.pid  # its own session: its workers share the id
    try:
        yield log_path
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()


SESSIONS: dict[str, int] = {}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(match: Callable[[list[str], str], bool]) -> float:
    """User + system CPU of the live processes that ``match(stat fields, cmdline)`` (Linux
    /proc; 0 elsewhere). Under a shared machine's noise, CPU per call is steadier than
    latency or throughput."""
    total = 0
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if match(fields, cmdline):
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def session_cpu(name: str) -> Callable[[], float]:
    """CPU of a process started by ``process(name, ...)`` and its workers."""
    return lambda: cpu_seconds(lambda fields, _: fields[3] == str(SESSIONS[name]))


def own_cpu() -> float:
    """User + system CPU seconds of this process (the benchmark's clients)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def serves_bench_database(cmdline: str) -> bool:
    """Whether a process is a PostgreSQL backend of the benchmark's database."""
    return cmdline.startswith("postgres: ") and f" {DATABASE} " in cmdline


def database_cpu() -> float:
    """The PostgreSQL backends of the benchmark's database (when PostgreSQL runs here)."""
    return cpu_seconds(lambda _, cmdline: serves_bench_database(cmdline))


def gateway_cpu(name: str) -> Callable[[], float]:
    """A gateway's workers and the PostgreSQL backends of the benchmark's database (its
    twin's, idle meanwhile, add nothing)."""
    return lambda: cpu_seconds(
        lambda fields, cmdline: fields[3] == str(SESSIONS[name]) or serves_bench_database(cmdline)
    )


def wait_ready(url: str, log_path: Path, timeout: float) -> None:
    """Until ``url`` answers anything over HTTP; the log's tail if the server died or stalled."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise StartFailed(f"not answering at {url} after {timeout:.0f} s; {tail(log_path)}")


def tail(path: Path, lines: int = 6) -> str:
    text = path.read_text(errors="replace").strip().splitlines()
    return "log: " + " | ".join(text[-lines:]) if text else "empty log"


def base_env() -> dict[str, str]:
    """A clean environment: our own settings must not leak into a server under test."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    return {name: os.environ[name] for name in keep if name in os.environ}


def uvicorn_command(app: str, port: int, *extra: str) -> list[str]:
    return [
        str(VENV_BIN / "uvicorn"),
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
        *extra,
    ]


# --- the stand-in -------------------------------------------------------------------------


@contextmanager
def standin(logs: Path, reply_words: int) -> Iterator[Target]:
    """The provider stand-in; its target is the direct baseline."""
    port = free_port()
    env = {**base_env(), "PYTHONPATH": str(ROOT), "STANDIN_REPLY_WORDS": str(reply_words)}
    command = uvicorn_command("benchmarks.upstream_standin:app", port, "--lifespan", "off")
    with process("standin", command, env, logs) as log_path:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, log_path, timeout=30)
        target = Target(name="direct", cpu=session_cpu("standin"))
        yield at_provider_paths(target, base, UPSTREAM_KEY)


# --- our gateway ----------------------------------------------------------------------------


def run_manage(env: dict[str, str], *args: str, extra_env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(VENV_BIN / "python"), "manage.py", *args],
        cwd=ROOT,
        env={**env, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode:
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise StartFailed(f"manage.py {args[0]} failed: {' | '.join(detail)}")
    return result.stdout.strip()


def recreate_database() -> None:
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {DATABASE}")


def drop_database() -> None:
    try:
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    except psycopg.Error as exc:
        print(f"warning: could not drop database {DATABASE}: {exc}", file=sys.stderr)


def flush_redis() -> None:
    try:
        redis.Redis.from_url(REDIS_URL).flushdb()  # db 7 is the benchmark's own
    except redis.RedisError as exc:
        print(f"warning: could not flush {REDIS_URL}: {exc}", file=sys.stderr)


def gateway_env(upstream: str) -> dict[str, str]:
    """Production settings (DEBUG off) against the stand-in."""
    key_ring = subprocess.run(
        [
            str(VENV_BIN / "python"),
            "-c",
            'from safer_claw.encryption import generate_key_entry as g; print(g("bench"))',
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return {
        **base_env(),
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ENCRYPTION_KEYS": key_ring,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
        "DATABASE_URL": f"{POSTGRES}/{DATABASE}",
        "REDIS_URL": REDIS_URL,
        "OPENAI_UPSTREAM_URL": f"{upstream}/v1",
        "ANTHROPIC_UPSTREAM_URL": upstream,
        "LOG_LEVEL": "WARNING",
    }


# Run with manage.py shell -c: running, paid agents, each in an active run (the calls
# are charged to it, as the runtime's are), limits no benchmark reaches, and prices.
# Prints {provider: [token, ...]} as JSON.
PREPARE_AGENTS = """
import datetime as dt, json
from decimal import Decimal
from django.contrib.auth import get_user_model
from django.utils import timezone
from agents.conversations import Message, Run
from agents.models import Agent
from agents.services import create_agent
from agents.tokens import issue_agent_token
from gateway.models import ModelPrice
owner = get_user_model().objects.create_user("bench@example.com", "bench-password-1")
tokens = {{}}
for provider in {providers!r}:
    tokens[provider] = []
    for number in range({count}):
        agent = create_agent(
            owner=owner, name=f"bench-{{provider}}-{{number}}", provider=provider,
            provider_key={key!r},
        )
        Agent.objects.filter(pk=agent.pk).update(
            status="running",
            billing_active=True,
            daily_token_cap=10**12,
            monthly_cost_cap=Decimal("1000000"),
            max_requests_per_minute=1_000_000,
            max_model_steps_per_run=10**9,
            max_tool_calls_per_run=10**9,
            max_tool_calls_per_day=10**9,
        )
        now = timezone.now()
        message = Message.objects.create(agent=agent, role="owner", content="benchmark")
        Run.objects.create(
            agent=agent, message=message, status="active", started_at=now,
            deadline=now + dt.timedelta(days=1),
        )
        tokens[provider].append(issue_agent_token(agent=agent))
for provider, model in {models!r}.items():
    ModelPrice.objects.update_or_create(
        provider=provider,
        model=model,
        defaults=dict(
            input_per_mtok=Decimal("0.15"),
            cached_input_per_mtok=Decimal("0.075"),
            cache_write_5m_per_mtok=Decimal("0.1875"),
            cache_write_1h_per_mtok=Decimal("0.30"),
            output_per_mtok=Decimal("0.60"),
        ),
    )
print(json.dumps(tokens))
"""


def prepare_gateway(
    env: dict[str, str], providers: list[str], agents: int = 1
) -> dict[str, list[str]]:
    """A fresh database with ``agents`` running agents per provider; their tokens."""
    recreate_database()
    redis.Redis.from_url(REDIS_URL).flushdb()
    run_manage(env, "migrate", "--noinput", "--verbosity", "0")
    models = {provider: MODELS[provider] for provider in providers}
    script = PREPARE_AGENTS.format(
        providers=providers, count=agents, key=UPSTREAM_KEY, models=models
    )
    return json.loads(run_manage(env, "shell", "-c", script).splitlines()[-1])


# Our gateway's benchmark-only twins, by target name: (process name, ASGI application,
# extra environment). Each serves the same agents from the same database as ours.
TWINS = {
    "ours, no ledger": ("unmetered", "benchmarks.unmetered_gateway:application", {}),
    # Each call's own row and nothing else: no leases (GATEWAY_LEASE_CALLS=1).
    "floor, row before": (
        "floor-before", "benchmarks.ledger_floor_gateway:application",
        {"LEDGER_FLOOR": "before", "GATEWAY_LEASE_CALLS": "1"},
    ),
    "floor, row after": (
        "floor-after", "benchmarks.ledger_floor_gateway:application",
        {"LEDGER_FLOOR": "after", "GATEWAY_LEASE_CALLS": "1"},
    ),
    "floor, settled row": (
        "floor-settled", "benchmarks.ledger_floor_gateway:application",
        {"LEDGER_FLOOR": "settled", "GATEWAY_LEASE_CALLS": "1"},
    ),
    # Our gateway as it is, but admitting every call alone (gateway.leases off).
    "ours, leases off": ("unleased", "safer_claw.asgi:application", {"GATEWAY_LEASE_CALLS": "1"}),
}  # fmt: skip


@contextmanager
def our_gateway(
    logs: Path, upstream: str, providers: list[str], agents: int = 1
) -> Iterator[Target]:
    with our_gateways(logs, upstream, providers, agents, twins=()) as (ours,):
        yield ours


@contextmanager
def our_gateways(
    logs: Path,
    upstream: str,
    providers: list[str],
    agents: int = 1,
    *,
    twins: Sequence[str] = ("ours, no ledger",),
) -> Iterator[tuple[Target, ...]]:
    """Our gateway and its ``twins`` (``TWINS``), on one database with the same agents."""
    apps = {"ours": ("gateway", "safer_claw.asgi:application", {})}
    apps.update({name: TWINS[name] for name in twins})
    served = [Target(name=name, cpu=gateway_cpu(apps[name][0])) for name in apps]
    with ExitStack() as stack:
        try:
            env = gateway_env(upstream)
            stack.callback(drop_database)
            stack.callback(flush_redis)
            tokens = prepare_gateway(env, providers, agents)
            for target in served:
                name, app, extra = apps[target.name]
                port = free_port()
                # As production runs it: one uvicorn worker per core.
                command = uvicorn_command(app, port, "--workers", str(GATEWAY_WORKERS))
                log_path = stack.enter_context(process(name, command, {**env, **extra}, logs))
                base = f"http://127.0.0.1:{port}"
                wait_ready(base, log_path, timeout=60)
                for provider, each in tokens.items():
                    target.urls[provider] = f"{base}/gateway/{provider}{PATHS[provider]}"
                    target.headers[provider] = [auth_headers(provider, token) for token in each]
        except (
            StartFailed,
            OSError,
            subprocess.SubprocessError,
            psycopg.Error,
            redis.RedisError,
        ) as exc:
            for target in served:
                target.down = str(exc)
        yield tuple(served)


# --- a bare proxy -------------------------------------------------------------------------


@contextmanager
def bare_proxy(logs: Path, upstream: str) -> Iterator[Target]:
    """``benchmarks/bare_proxy.py`` in front of the stand-in, as many workers as ours."""
    target = Target(name="bare proxy", cpu=session_cpu("bare"))
    port = free_port()
    env = {**base_env(), "PYTHONPATH": str(ROOT), "BARE_UPSTREAM": upstream}
    command = uvicorn_command("benchmarks.bare_proxy:app", port, "--workers", str(GATEWAY_WORKERS))
    with process("bare", command, env, logs) as log_path:
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, log_path, timeout=30)
        except StartFailed as exc:
            target.down = str(exc)
            yield target
            return
        yield at_provider_paths(target, base, UPSTREAM_KEY)


# --- LiteLLM ------------------------------------------------------------------------------


def litellm_version() -> str:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return ""
    result = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip()


def ensure_litellm() -> str:
    """LiteLLM's proxy in its own virtualenv (never in .venv); its version."""
    if litellm_version() != LITELLM_VERSION:
        print(f"==> installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV} (once)")
        LITELLM_VENV.parent.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run(
            [
                str(LITELLM_VENV / "bin" / "pip"),
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"litellm[proxy]=={LITELLM_VERSION}",
            ],
            check=True,
        )
    return litellm_version()


def litellm_config(upstream: str, master_key: str) -> dict:
    """Both providers' models on the stand-in; no database, no budgets, no logging."""
    bases = {"openai": f"{upstream}/v1", "anthropic": upstream}
    return {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {
                    "model": f"{provider}/{model}",
                    "api_base": bases[provider],
                    "api_key": UPSTREAM_KEY,
                },
            }
            for provider, model in MODELS.items()
        ],
        "litellm_settings": {
            "set_verbose": False,
            "turn_off_message_logging": True,
            "telemetry": False,
        },
        # It refuses to start without a master key; with one and no database it
        # checks that key on every call, as our gateway checks the agent's token.
        "general_settings": {"master_key": master_key, "disable_spend_logs": True},
    }


@contextmanager
def litellm_proxy(logs: Path, upstream: str) -> Iterator[Target]:
    target = Target(name="litellm", cpu=session_cpu("litellm"))
    with ExitStack() as stack:
        try:
            ensure_litellm()
            master_key = f"sk-{secrets.token_urlsafe(32)}"
            config = logs / "litellm.yaml"  # JSON is YAML
            config.write_text(json.dumps(litellm_config(upstream, master_key), indent=1))
            port = free_port()
            env = {
                **base_env(),
                "HOME": str(logs),
                "LITELLM_LOG": "ERROR",
                # The pricing map ships with the package; never fetch it at start-up.
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            }
            command = [
                str(LITELLM_VENV / "bin" / "litellm"),
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--num_workers",
                str(GATEWAY_WORKERS),  # as many as ours get
            ]
            log_path = stack.enter_context(process("litellm", command, env, logs))
            base = f"http://127.0.0.1:{port}"
            wait_ready(f"{base}/health/liveliness", log_path, timeout=180)
        except (StartFailed, OSError, subprocess.SubprocessError) as exc:
            target.down = str(exc)
            yield target
            return
        yield at_provider_paths(target, base, master_key)


@contextmanager
def log_folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as folder:
        yield Path(folder)
