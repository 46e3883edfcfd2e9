"""Wake an agent's waiting inbox long poll when something lands in its inbox.

The inbox (``/agent-api/v1/inbox``) holds each runtime's request open for up to
``AGENT_INBOX_WAIT_SECONDS``. With 200 agents polling, checking the database
in a loop would cost 200 queries every few seconds for nothing, so a waiting
poll sleeps until it is woken:

* in this process, by :func:`notify_inbox`'s ``on_commit`` callback;
* from any process (the Celery worker firing a schedule, another web worker
  taking the owner's message), by PostgreSQL ``NOTIFY`` on one channel, which
  one listener thread per process ``LISTEN``s to.

No Redis: the inbox keeps working with Redis down. While the listener is not
connected (SQLite in a local run, PostgreSQL restarting), a waiting poll also
looks again every ``AGENT_INBOX_FALLBACK_POLL_SECONDS``; when the listener
(re)connects it wakes every waiting poll, so a notification lost meanwhile
costs one extra query, not a missed message.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from django.conf import settings
from django.db import connection, connections, transaction

logger = logging.getLogger(__name__)

CHANNEL = "saferclaw_inbox"


class Waiter:
    """One waiting poll, bound to the event loop it waits in."""

    def __init__(self, agent_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.agent_id = agent_id
        self._loop = loop
        self._event = asyncio.Event()

    def wake(self) -> None:
        """Safe from any thread."""
        self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float) -> bool:
        """Sleep until woken or ``timeout``; True when woken."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            self._event.clear()
        return True


_waiters: dict[str, set[Waiter]] = {}
_lock = threading.Lock()


def subscribe(agent_id: Any) -> Waiter:
    """Register a waiting poll for ``agent_id`` (before looking at the inbox, so a
    message that lands in between still wakes it). Call :func:`unsubscribe` after."""
    _ensure_listener()
    waiter = Waiter(str(agent_id), asyncio.get_running_loop())
    with _lock:
        _waiters.setdefault(waiter.agent_id, set()).add(waiter)
    return waiter


def unsubscribe(waiter: Waiter) -> None:
    with _lock:
        waiting = _waiters.get(waiter.agent_id)
        if waiting is not None:
            waiting.discard(waiter)
            if not waiting:
                del _waiters[waiter.agent_id]


def wake(agent_id: Any) -> None:
    with _lock:
        waiting = list(_waiters.get(str(agent_id), ()))
    for waiter in waiting:
        waiter.wake()


def wake_all() -> None:
    with _lock:
        waiting = [waiter for group in _waiters.values() for waiter in group]
    for waiter in waiting:
        waiter.wake()


def notify_inbox(agent_id: Any) -> None:
    """Say, from inside the transaction that filled the inbox, that it has something.

    Both wake-ups happen only if that transaction commits.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, str(agent_id)])
    transaction.on_commit(lambda: wake(agent_id))


def wait_slice(remaining: float) -> float:
    """How long a poll may sleep before it looks at the database again."""
    if _listener.connected:
        return remaining
    return min(remaining, settings.AGENT_INBOX_FALLBACK_POLL_SECONDS)


class _Listener:
    """One thread per process that LISTENs on the channel and wakes waiting polls."""

    RECONNECT_SECONDS = 5.0
    CHECK_SECONDS = 60.0  # how often an idle connection is checked (one SELECT 1)

    def __init__(self) -> None:
        self.connected = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopping = threading.Event()

    def ensure_started(self) -> None:
        if self._thread is not None or connection.vendor != "postgresql":
            return
        with self._start_lock:
            if self._thread is None:
                params = _listen_params()
                self._thread = threading.Thread(
                    target=self._run, args=(params,), name="inbox-listener", daemon=True
                )
                self._thread.start()

    def _run(self, params: dict[str, Any]) -> None:
        import psycopg

        while not self._stopping.is_set():
            try:
                with psycopg.connect(**params, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.connected = True
                    wake_all()  # anything sent while we were not listening
                    while not self._stopping.is_set():
                        for notice in conn.notifies(timeout=self.CHECK_SECONDS):
                            if self._stopping.is_set():
                                break
                            wake(notice.payload)
                        conn.execute("SELECT 1")  # notice a dead connection
            except Exception as exc:  # any failure: fall back to polling, then reconnect
                self.connected = False
                logger.warning("inbox listener disconnected (%s); polls fall back", exc)
                self._stopping.wait(self.RECONNECT_SECONDS)
        self.connected = False

    def stop(self) -> None:
        """End the thread and close its connection (tests drop their database after)."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        if self.connected:
            import psycopg

            # Wake the thread out of its wait for notifications.
            with psycopg.connect(**_listen_params(), autocommit=True) as conn:
                conn.execute("SELECT pg_notify(%s, '')", [CHANNEL])
        thread.join(timeout=10)
        self._thread = None
        self._stopping.clear()


def _listen_params() -> dict[str, Any]:
    database = connections["default"].settings_dict
    params = {
        "dbname": database["NAME"],
        "user": database.get("USER") or None,
        "password": database.get("PASSWORD") or None,
        "host": database.get("HOST") or None,
        "port": database.get("PORT") or None,
        "connect_timeout": 5,
    }
    return {key: value for key, value in params.items() if value is not None}


_listener = _Listener()


def _ensure_listener() -> None:
    _listener.ensure_started()


def listener_connected() -> bool:
    return _listener.connected


def stop_listener() -> None:
    _listener.stop()
