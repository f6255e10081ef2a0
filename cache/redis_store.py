"""The shared Redis layer: short timeouts, a circuit breaker, fail open.

Every error or timeout is a miss (get), a skipped store (set) or "go upstream
yourself" (claim), never a failed request; after repeated failures the breaker
stops trying for a while, then probes, so recovery is automatic when Redis comes
back. ``redis://`` is one server; ``redis+cluster://host:port`` is a Redis
Cluster reached through one node (the client finds the rest).

Cross-balancer coalescing (nginx's ``proxy_cache_lock``, across processes): the
first balancer to miss a key ``claim``s it (``SET lock NX PX``) and goes
upstream; the others ``wait`` for the stored answer, polling with back-off until
it appears, the lock disappears (the holder gave up: no storable answer), or the
lock's time runs out; then they go upstream themselves. Entry and lock keys share
a hash tag (the key's digest), so they live in one cluster slot.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from cache.breaker import CircuitBreaker

log = logging.getLogger(__name__)

CLUSTER_SCHEME = "redis+cluster://"
SCHEMES = ("redis://", "rediss://", "unix://", CLUSTER_SCHEME)


def lock_key(key: str) -> str:
    """The lock of an entry key ``...:{digest}``: same hash tag, so same cluster slot."""
    return "affinity:lock:" + key[key.rfind(":") + 1 :]


class RedisStore:
    def __init__(self, url: str, timeout: float = 0.1, breaker: CircuitBreaker | None = None) -> None:
        if not url.startswith(SCHEMES):
            raise ValueError(f"redis URL must start with one of {', '.join(SCHEMES)}")
        self.url = url
        self.timeout = timeout
        self.breaker = breaker or CircuitBreaker()
        self.errors = 0
        self.token = os.urandom(8).hex()  # this process's name on the locks it holds
        options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        self._client: Any
        if url.startswith(CLUSTER_SCHEME):
            self._client = RedisCluster.from_url("redis://" + url[len(CLUSTER_SCHEME) :], **options)
        else:
            self._client = aioredis.Redis.from_url(url, max_connections=64, **options)

    async def _call(self, op: str, coro: Any, failed: Any = None) -> Any:
        if not self.breaker.allow():
            coro.close()
            return failed
        try:
            value = await asyncio.wait_for(coro, self.timeout)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(op, exc)
            return failed
        self.breaker.success()
        return value

    async def get(self, key: str) -> bytes | None:
        value = await self._call("get", self._client.get(key))
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl: float) -> bool:
        return bool(await self._call("set", self._client.set(key, value, px=max(1, int(ttl * 1000))), False))

    async def set_and_release(self, key: str, value: bytes, ttl: float) -> bool:
        """Store an answer, then drop our lock on it (one round trip)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.set(key, value, px=max(1, int(ttl * 1000)))
        pipe.delete(lock_key(key))
        return bool(await self._call("set", pipe.execute(), False))

    async def claim(self, key: str, hold: float) -> tuple[bool, bytes | None]:
        """(claimed, entry): claimed when this process should compute the answer (it
        took the lock, or Redis cannot say: fail open); the entry when another
        process stored it since this one looked (checked in the same round trip,
        so no answer stored between a miss and a claim is ever computed again)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.set(lock_key(key), self.token, nx=True, px=max(1, int(hold * 1000)))
        pipe.get(key)
        found = await self._call("lock", pipe.execute())
        if found is None:
            return True, None
        taken, value = found
        if isinstance(value, bytes):
            if taken:
                await self.release(key)
            return False, value
        return bool(taken), None

    async def release(self, key: str) -> None:
        await self._call("unlock", self._client.delete(lock_key(key)))

    async def wait(self, key: str, limit: float) -> bytes | None:
        """The entry another process is computing, once stored; None when it gave up,
        its lock ran out, ``limit`` passed, or Redis failed."""
        deadline = time.monotonic() + limit
        pause = 0.002
        while time.monotonic() < deadline:
            # The lock first, then the entry: a holder stores before it unlocks, so
            # "unlocked and no entry" can only mean it gave up.
            pipe = self._client.pipeline(transaction=False)
            pipe.exists(lock_key(key))
            pipe.get(key)
            found = await self._call("wait", pipe.execute())
            if found is None:
                return None
            locked, value = found
            if isinstance(value, bytes):
                return value
            if not locked:
                return None
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.025)
        return None

    def _failed(self, op: str, exc: BaseException) -> None:
        self.errors += 1
        was = self.breaker.state
        self.breaker.failure()
        if self.breaker.state != was:
            log.warning("redis cache %s failed (%s); breaker now %s", op, type(exc).__name__, self.breaker.state)

    async def close(self) -> None:
        await self._client.aclose()
