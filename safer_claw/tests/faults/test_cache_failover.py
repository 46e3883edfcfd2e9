"""The failover cache against a real Redis that goes away and comes back: it
keeps counting, says so once each way (not once per request), and is back on
Redis when Redis is."""

from __future__ import annotations

import logging

import pytest
import redis

from safer_claw.cache import FailoverCache
from safer_claw.tests.faults.harness import RedisServer

pytestmark = [pytest.mark.faults]


def test_the_cache_fails_over_to_memory_and_back(tmp_path, caplog):
    server = RedisServer(tmp_path)
    server.start()
    try:
        cache = FailoverCache(server.url, {"RETRY_SECONDS": 0})  # Redis tried every call
        cache.set("on-redis", 1)
        assert redis.Redis.from_url(server.url).exists(":1:on-redis")

        server.kill()
        with caplog.at_level(logging.WARNING, logger="safer_claw.cache"):
            cache.add("attempts", 0)
            for _ in range(50):
                cache.incr("attempts")
            assert cache.get("attempts") == 50  # still counting, in memory
            assert cache.using_fallback
            server.start()
            cache.set("back", 1)
        assert redis.Redis.from_url(server.url).exists(":1:back")
        assert not cache.using_fallback
        assert [r.getMessage().split(";")[0] for r in caplog.records] == [
            "cache: Redis is not answering (ConnectionError)",
            "cache: Redis answers again",
        ]
    finally:
        server.kill()
