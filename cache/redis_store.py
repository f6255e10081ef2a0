"""The shared Redis layer: short timeouts, a circuit breaker, fail open.

Every error or timeout is a miss (get) or a skipped store (set), never a failed
request; after repeated failures the breaker stops trying for a while, then
probes, so recovery is automatic when Redis comes back.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cache.breaker import CircuitBreaker

log = logging.getLogger(__name__)


class RedisStore:
    def __init__(self, url: str, timeout: float = 0.1, breaker: CircuitBreaker | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.breaker = breaker or CircuitBreaker()
        self.errors = 0
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            max_connections=64,
        )

    async def get(self, key: str) -> bytes | None:
        if not self.breaker.allow():
            return None
        try:
            value = await asyncio.wait_for(self._client.get(key), self.timeout)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed("get", exc)
            return None
        self.breaker.success()
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl: int) -> bool:
        if not self.breaker.allow():
            return False
        try:
            await asyncio.wait_for(self._client.set(key, value, ex=ttl), self.timeout)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed("set", exc)
            return False
        self.breaker.success()
        return True

    def _failed(self, op: str, exc: BaseException) -> None:
        self.errors += 1
        was = self.breaker.state
        self.breaker.failure()
        if self.breaker.state != was:
            log.warning("redis cache %s failed (%s); breaker now %s", op, type(exc).__name__, self.breaker.state)

    async def close(self) -> None:
        await self._client.aclose()
