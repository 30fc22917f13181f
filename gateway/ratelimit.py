"""The gateway's rate limits: moving windows per API key and route, shared by every worker through Redis.

`RATE_LIMIT` uses the `limits` library's syntax ("50 per second;2000 per minute"); a request
passes only if it fits every limit, and only a request that passes is counted. With a redis://
storage one Lua script checks and counts all the limits and returns what the X-RateLimit
headers need, in one round trip: flask-limiter, used before, made one round trip per limit and
another for the headers, about 0.9 ms of the gateway's CPU per detection (docs/performance.md).
Any other storage URI (memory:// by default) goes through the `limits` library's moving window.

If Redis fails, the limits keep holding per worker in memory (the `limits` library again) and
Redis is tried again after REDIS_RETRY_S; requests are never failed because Redis is down.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import limits
import redis
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

REDIS_RETRY_S = 1.0
KEY_PREFIX = "gateway-rate"

log = logging.getLogger(__name__)

# KEYS: one list of hit times (newest first) per limit. ARGV: now (ms), then amount and window
# (ms) per limit. Checks every limit before counting in any, so a refused request counts nowhere.
# Returns {passed, limit index, remaining, reset (ms)}: the refusing limit, else the one with the
# fewest requests left. The list is ordered by time, so the hits in the window are found by
# binary search.
_MOVING_WINDOWS = """
local now = tonumber(ARGV[1])
local function in_window(key, window)
  local low, high = 0, redis.call('LLEN', key)
  while low < high do
    local middle = math.floor((low + high) / 2)
    if tonumber(redis.call('LINDEX', key, middle)) > now - window then low = middle + 1 else high = middle end
  end
  return low
end
local counts = {}
for i = 1, #KEYS do
  local amount, window = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  counts[i] = in_window(KEYS[i], window)
  if counts[i] >= amount then
    return {0, i, 0, tonumber(redis.call('LINDEX', KEYS[i], amount - 1)) + window}
  end
end
local tightest, remaining, reset = 1, nil, now
for i = 1, #KEYS do
  local amount, window = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  redis.call('LPUSH', KEYS[i], now)
  redis.call('LTRIM', KEYS[i], 0, amount - 1)
  redis.call('PEXPIRE', KEYS[i], window)
  local left = amount - counts[i] - 1
  if remaining == nil or left < remaining then
    tightest, remaining = i, left
    reset = tonumber(redis.call('LINDEX', KEYS[i], counts[i])) + window
  end
end
return {1, tightest, remaining, reset}
"""


@dataclass(frozen=True)
class Verdict:
    passed: bool
    limit: limits.RateLimitItem  # the refusing limit, or the one closest to refusing
    remaining: int
    reset_at: float  # epoch seconds when the window of `limit` frees a request

    def headers(self) -> dict[str, str]:
        return {"X-RateLimit-Limit": str(self.limit.amount), "X-RateLimit-Remaining": str(self.remaining),
                "X-RateLimit-Reset": str(math.ceil(self.reset_at))}

    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.reset_at - time.time()))


class RateLimiter:
    def __init__(self, spec: str, storage_uri: str) -> None:
        self.items = limits.parse_many(spec)
        if not self.items:
            raise SystemExit(f"configuration error: RATE_LIMIT {spec!r} names no limit")
        self._script = None
        self._outage = False
        self._retry_redis_at = 0.0
        if storage_uri.startswith(("redis://", "rediss://", "unix://")):
            client = redis.Redis.from_url(storage_uri, socket_timeout=1.0, socket_connect_timeout=1.0)
            self._script = client.register_script(_MOVING_WINDOWS)
            self._library = MovingWindowRateLimiter(MemoryStorage())  # the fallback while Redis is down
        else:
            self._library = MovingWindowRateLimiter(storage_from_string(storage_uri))

    def hit(self, key: str) -> Verdict:
        """Count one request for `key` if it fits every limit; say whether it did."""
        if self._script is not None and time.monotonic() >= self._retry_redis_at:
            try:
                verdict = self._hit_redis(key)
            except redis.RedisError as error:
                if not self._outage:  # once per outage
                    self._outage = True
                    log.warning("rate-limit storage unavailable (%s); limiting per worker in memory", error,
                                extra={"event.action": "rate-limit", "event.outcome": "failure"})
                self._retry_redis_at = time.monotonic() + REDIS_RETRY_S
            else:
                if self._outage:
                    self._outage = False
                    log.info("rate-limit storage is back; limits are shared again",
                             extra={"event.action": "rate-limit", "event.outcome": "success"})
                return verdict
        return self._hit_library(key)

    def _hit_redis(self, key: str) -> Verdict:
        now_ms = int(time.time() * 1000)
        # {key}: a Redis Cluster hash tag, so that one script's keys share a slot.
        keys = [f"{KEY_PREFIX}:{{{key}}}:{item.amount}/{item.get_expiry()}" for item in self.items]
        args = [now_ms]
        for item in self.items:
            args += [item.amount, item.get_expiry() * 1000]
        assert self._script is not None
        passed, index, remaining, reset_ms = self._script(keys=keys, args=args)
        return Verdict(bool(passed), self.items[int(index) - 1], int(remaining), int(reset_ms) / 1000)

    def _hit_library(self, key: str) -> Verdict:
        for item in self.items:
            if not self._library.test(item, key):
                return Verdict(False, item, 0, self._library.get_window_stats(item, key).reset_time)
        for item in self.items:
            self._library.hit(item, key)
        stats = [(self._library.get_window_stats(item, key), item) for item in self.items]
        window, item = min(stats, key=lambda pair: pair[0].remaining)
        return Verdict(True, item, window.remaining, window.reset_time)
