"""Real services of the fault suite's own, to stop, kill and restart.

Never the shared PostgreSQL on 5432, Redis on 6379 or the two test engines:
each fault test starts its own Redis server, PostgreSQL cluster, Celery worker
or web server on a free port, injects the fault on that process by its PID,
and cleans up after itself.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings

ROOT = Path(__file__).resolve().parents[3]
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], object], *, what: str, seconds: float = 60) -> object:
    """Poll ``check`` until it returns something truthy (an outcome, not a timing)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            result = check()
        except Exception:  # not up yet
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class RedisServer:
    """``redis-server`` on a port of its own, no persistence."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: port_answers(self.port), what="redis-server to answer")

    def kill(self) -> None:
        """Gone at once, as a crashed or stopped Redis is."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else name


class PgCluster:
    """A throwaway PostgreSQL cluster (initdb, pg_ctl) on a port of its own.

    PostgreSQL refuses to run as root, so as root it runs as ``postgres``.
    """

    def __init__(self) -> None:
        self.port = free_port()
        # Its own folder in /tmp: pytest's tmp_path is root's only (mode 0700).
        self.directory = Path(tempfile.mkdtemp(prefix="saferclaw-faults-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise subprocess.CalledProcessError(
                done.returncode, command, output=done.stdout, stderr=done.stderr
            )

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run(
            _pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories="
        options += " -c fsync=off -c max_connections=200"
        self._run(
            _pg_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "start",
        )

    def stop(self) -> None:
        """``fast``: clients are disconnected at once, as in a restart."""
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)


def service_env(
    *, database_url: str, redis_url: str = "", with_static: bool = True, **extra: str
) -> dict[str, str]:
    """The environment of a control-plane process started by a fault test: the
    real settings (DEBUG off), this test run's keys, the given database and Redis."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "safer_claw.settings",
        "DEBUG": "false",
        "SECRET_KEY": settings.SECRET_KEY,
        "ENCRYPTION_KEYS": settings.ENCRYPTION_KEYS,
        "ALLOWED_HOSTS": "testserver,localhost,127.0.0.1",
        "SECURE_SSL_REDIRECT": "false",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DATABASE_POOL_MIN": "1",
        "DATABASE_POOL_MAX": "8",
        **({"STATIC_ROOT": collected_static()} if with_static else {}),
        **extra,
    }
    if not redis_url:
        env.pop("REDIS_URL")
    return env


_static_root: str | None = None


def collected_static() -> str:
    """A folder with collectstatic's output (production serves its manifest), made
    once per test run."""
    global _static_root
    if _static_root is None:
        folder = tempfile.mkdtemp(prefix="saferclaw-faults-static-")
        env = service_env(database_url="sqlite:///unused", STATIC_ROOT=folder, with_static=False)
        manage(env, "collectstatic", "--noinput", "--verbosity", "0")
        _static_root = folder
    return _static_root


def run_database_url() -> str:
    """The URL of the database pytest-django made for this run (test_<name>)."""
    db = settings.DATABASES["default"]
    user, host, port = db["USER"] or "postgres", db["HOST"] or "127.0.0.1", db["PORT"] or 5432
    return f"postgres://{user}@{host}:{port}/{db['NAME']}"


class Service:
    """A control-plane process (uvicorn, Celery worker, a command) we may kill -9."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.process: subprocess.Popen | None = None

    def start(self) -> Service:
        self._log_file = self.log.open("ab")
        self.process = subprocess.Popen(
            self.args,
            cwd=ROOT,
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill9(self) -> None:
        """SIGKILL the whole process group: nothing gets to clean up."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()
        self.process = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def uvicorn(env: dict[str, str], port: int, log: Path) -> Service:
    return Service(
        [
            *(PYTHON, "-m", "uvicorn", "safer_claw.asgi:application", "--host", "127.0.0.1"),
            *("--port", str(port), "--workers", "1", "--no-access-log"),
        ],
        env,
        log,
    )


def celery_worker(env: dict[str, str], log: Path, *, queue: str = "celery") -> Service:
    """A prefork worker with one child: the child runs the task, so a kill -9 of
    the child is a worker dying mid-task (the parent stays and requeues it)."""
    return Service(
        [
            *(PYTHON, "-m", "celery", "-A", "safer_claw", "worker", "--pool=prefork"),
            *("--concurrency=1", "-Q", queue, "--without-mingle", "--without-gossip"),
            "--loglevel=INFO",
        ],
        env,
        log,
    )


def manage(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode:
        raise AssertionError(f"manage.py {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return done.stdout


class OwnEngine:
    """A dockerd of the test's own (data root, exec root, pidfile, socket, no
    bridge of the host's, no iptables rules), which a test may restart.

    Its image is the shared test image with a command that keeps running
    (``sleep``): agents' containers then live until stopped, and nothing needs
    a registry. The shared engine is only read (``docker save``).
    """

    IMAGE = "saferclaw/faults-sleeper:test"

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sc-faults-dockerd-"))
        self.socket = self.root / "docker.sock"
        self.pidfile = self.root / "docker.pid"
        self.url = f"unix://{self.socket}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = (self.root / "dockerd.log").open("ab")
        self.process = subprocess.Popen(
            [
                *("dockerd", "--data-root", str(self.root / "data")),
                *("--exec-root", str(self.root / "exec"), "--pidfile", str(self.pidfile)),
                *("-H", self.url, "--bridge", "none", "--iptables=false", "--ip-masq=false"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self._answers, what="the fault suite's dockerd to answer", seconds=90)

    def _answers(self) -> bool:
        return self.docker("version", "--format", "{{.Server.Version}}").returncode == 0

    def docker(self, *args: str, stdin=None) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["docker", "-H", self.url, *args], stdin=stdin, capture_output=True, timeout=300
        )

    def load_image(self, shared_url: str, base: str) -> str:
        """``base`` copied from the shared engine, with a command that keeps running."""
        save = subprocess.Popen(["docker", "-H", shared_url, "save", base], stdout=subprocess.PIPE)
        loaded = self.docker("load", stdin=save.stdout)
        save.wait(timeout=300)
        assert loaded.returncode == 0, loaded.stderr
        context = self.root / "image"
        context.mkdir(exist_ok=True)
        (context / "Dockerfile").write_text(f'FROM {base}\nCMD ["/bin/sleep", "100000"]\n')
        built = self.docker("build", "-q", "-t", self.IMAGE, str(context))
        assert built.returncode == 0, built.stderr
        return self.IMAGE

    def stop(self) -> None:
        """SIGTERM, as a restart of the service does; its containers are stopped."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)
        self.process = None

    def destroy(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.docker("rm", "-f", *self._containers())
            self.docker("network", "prune", "-f")
        self.stop()
        subprocess.run(["umount", "-R", str(self.root / "data")], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def _containers(self) -> list[str]:
        listed = self.docker("ps", "-aq")
        return listed.stdout.decode().split() or ["none"]


class SmtpServer:
    """A mail server on loopback speaking just enough SMTP for Django's backend.

    It keeps each message it accepts (250 to DATA). With ``hold_first_quit`` it
    does not answer the first QUIT, so the sender stays blocked after its mail
    was accepted, before its task can finish: the point to kill it at.
    """

    def __init__(self, *, hold_first_quit: bool = False) -> None:
        self.port = free_port()
        self.messages: list[bytes] = []
        self.holding = threading.Event()  # a sender waits on its QUIT
        self._release = threading.Event()
        self._hold = hold_first_quit
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> SmtpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._sock.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 faults ESMTP\r\n")
            for line in lines:
                verb = line[:4].upper()
                if verb == b"DATA":
                    conn.sendall(b"354 go on\r\n")
                    self.messages.append(self._read_data(lines))
                    conn.sendall(b"250 kept\r\n")
                elif verb == b"QUIT":
                    if self._hold:
                        self._hold = False
                        self.holding.set()
                        self._release.wait()
                    conn.sendall(b"221 bye\r\n")
                    return
                else:  # EHLO, MAIL, RCPT, RSET, NOOP
                    conn.sendall(b"250 ok\r\n")

    @staticmethod
    def _read_data(lines) -> bytes:
        body = []
        for line in lines:
            if line == b".\r\n":
                break
            body.append(line)
        return b"".join(body)
