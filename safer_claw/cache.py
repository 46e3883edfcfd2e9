"""A cache that keeps answering when Redis does not.

The login throttle and the API's rate limits count in the cache. With Redis
alone, Redis down meant every sign-in and API call answered 500. This backend
uses Redis while it answers and, when it does not, a per-process memory cache:
limits still hold (per process instead of across processes, so with N web
workers a client gets at most N times its allowance while Redis is away).
Redis is tried again every ``RETRY_SECONDS`` (a cache setting; default 5);
the switch each way is logged once, never per request.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

RETRY_SECONDS = 5.0
# Redis on loopback answers in well under a millisecond; waiting longer than
# this for a connection only makes every request wait during an outage.
DEFAULT_REDIS_OPTIONS = {"socket_connect_timeout": 0.25, "socket_timeout": 0.5}


class FailoverCache(BaseCache):
    """Redis first; a per-process LocMemCache while Redis fails."""

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        options = {**DEFAULT_REDIS_OPTIONS, **params.get("OPTIONS", {})}
        self._primary = RedisCache(server, {**params, "OPTIONS": options})
        shared = {k: params[k] for k in ("TIMEOUT", "KEY_PREFIX", "VERSION") if k in params}
        self._fallback = LocMemCache(f"failover:{id(self)}", shared)
        self._retry_at = 0.0  # monotonic time before which Redis is not tried
        self._retry_seconds = float(params.get("RETRY_SECONDS", RETRY_SECONDS))
        self._lock = threading.Lock()

    @property
    def using_fallback(self) -> bool:
        return self._retry_at > 0.0

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if time.monotonic() >= self._retry_at:
            try:
                result = getattr(self._primary, name)(*args, **kwargs)
            except (RedisError, OSError) as exc:
                self._failed(exc)
            else:
                self._answered()
                return result
        return getattr(self._fallback, name)(*args, **kwargs)

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            first = self._retry_at == 0.0
            self._retry_at = time.monotonic() + self._retry_seconds
        if first:
            logger.warning(
                "cache: Redis is not answering (%s); using this process's memory "
                "(rate limits now count per process) until it does",
                exc.__class__.__name__,
            )

    def _answered(self) -> None:
        if self._retry_at == 0.0:
            return
        with self._lock:
            was_down, self._retry_at = self._retry_at > 0.0, 0.0
        if was_down:
            logger.warning("cache: Redis answers again; back on Redis")

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call("add", key, value, self._timeout(timeout), version)

    def get(self, key, default=None, version=None):
        return self._call("get", key, default, version)

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call("set", key, value, self._timeout(timeout), version)

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call("touch", key, self._timeout(timeout), version)

    def delete(self, key, version=None):
        return self._call("delete", key, version)

    def get_many(self, keys, version=None):
        return self._call("get_many", keys, version)

    def has_key(self, key, version=None):
        return self._call("has_key", key, version)

    def incr(self, key, delta=1, version=None):
        return self._call("incr", key, delta, version)

    def set_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call("set_many", data, self._timeout(timeout), version)

    def delete_many(self, keys, version=None):
        return self._call("delete_many", keys, version)

    def clear(self):
        self._fallback.clear()
        return self._call("clear")

    def close(self, **kwargs):
        self._primary.close(**kwargs)

    def _timeout(self, timeout: Any) -> Any:
        # BaseCache's sentinel means "the default timeout": resolve it here, where
        # the default is known, so both caches expire a key alike.
        return self.default_timeout if timeout is DEFAULT_TIMEOUT else timeout
