"""gateway/ratelimit.py against a real Redis: the one-round-trip script keeps the same moving
windows as the `limits` library's (the memory:// storage and the fallback), shares them between
limiters (workers), and falls back to memory when Redis is unreachable."""
from __future__ import annotations

import logging
import time
import uuid

import pytest
import redis

from gateway import ratelimit
from gateway.ratelimit import RateLimiter
from tests.conftest import free_port

SPEC = "3 per second;5 per 10 seconds"


@pytest.fixture()
def redis_url(redis_server) -> str:
    url = redis_server.db(11)
    redis.Redis.from_url(url).flushdb()
    return url


def _trace(limiter: RateLimiter, key: str) -> list[tuple[bool, str, int, int]]:
    """Hits in two bursts a second apart: the per-second limit refuses in the first, the
    10-second one in the second. Each verdict: passed, limit, remaining, seconds to reset."""
    verdicts = []
    for burst in (5, 3):
        for _ in range(burst):
            v = limiter.hit(key)
            verdicts.append((v.passed, str(v.limit), v.remaining, round(v.reset_at - time.time())))
        time.sleep(1.05)
    return verdicts


def test_redis_script_keeps_the_same_windows_as_the_limits_library(redis_url: str) -> None:
    key = uuid.uuid4().hex
    in_redis, in_memory = _trace(RateLimiter(SPEC, redis_url), key), _trace(RateLimiter(SPEC, "memory://"), key)
    assert in_redis == in_memory
    assert [passed for passed, *_ in in_redis] == [True] * 3 + [False] * 2 + [True] * 2 + [False]
    assert in_redis[2][1:3] == ("3 per 1 second", 0) and in_redis[-1][1:3] == ("5 per 10 second", 0)


def test_workers_share_one_window_through_redis(redis_url: str) -> None:
    first, second, key = RateLimiter("4 per minute", redis_url), RateLimiter("4 per minute", redis_url), "shared"
    passed = [limiter.hit(key).passed for limiter in (first, second) * 4]
    assert passed == [True] * 4 + [False] * 4
    refused = first.hit(key)
    assert not refused.passed and 55 <= refused.retry_after_s() <= 60
    assert refused.headers() == {"X-RateLimit-Limit": "4", "X-RateLimit-Remaining": "0",
                                 "X-RateLimit-Reset": str(int(refused.reset_at + 0.999))}
    assert first.hit("another key").passed  # per key


def test_unreachable_redis_limits_in_memory_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RateLimiter("2 per minute", f"redis://127.0.0.1:{free_port()}/0")
    assert [limiter.hit("k").passed for _ in range(4)] == [True, True, False, False]
    time.sleep(ratelimit.REDIS_RETRY_S + 0.1)  # Redis is tried again, and still refuses
    assert not limiter.hit("k").passed
    assert caplog.text.count("rate-limit storage unavailable") == 1


def test_redis_coming_back_shares_limits_again(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.ratelimit")
    limiter, other_worker = RateLimiter("3 per minute", redis_url), RateLimiter("3 per minute", redis_url)
    limiter._retry_redis_at, limiter._outage = time.monotonic() + ratelimit.REDIS_RETRY_S, True  # as after a failure
    assert limiter.hit("back").passed  # counted in memory only
    time.sleep(ratelimit.REDIS_RETRY_S + 0.1)
    assert [limiter.hit("back").passed, other_worker.hit("back").passed, other_worker.hit("back").passed,
            limiter.hit("back").passed] == [True, True, True, False]
    assert "rate-limit storage is back" in caplog.text
