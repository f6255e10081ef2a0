"""Workers in Redis: the key each worker keeps alive, and the heartbeat that keeps it.

A worker started with ``--register-redis URL`` writes
``affinity:workers:<worker id>`` = ``{"worker_id": ..., "http": "http://host:port"}``
with a TTL, and rewrites it every third of the TTL; on drain it deletes the
key, and a worker that dies simply stops refreshing it, so it expires. A
balancer started with ``--workers-redis URL`` lists these keys
(``balancer.redis_members``). The key format lives here because both sides
need it and neither may import the other.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson

log = logging.getLogger(__name__)

KEY_PREFIX = "affinity:workers:"


def registration_key(worker_id: str) -> str:
    return KEY_PREFIX + worker_id


@dataclass(frozen=True, slots=True)
class Registration:
    worker_id: str
    http: str  # the base URL balancers reach the worker at

    def to_json(self) -> bytes:
        return orjson.dumps({"worker_id": self.worker_id, "http": self.http})

    @classmethod
    def from_json(cls, raw: bytes) -> Registration | None:
        """None for anything that is not a registration (never raises)."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(obj, dict):
            return None
        worker_id, http = obj.get("worker_id"), obj.get("http")
        if not isinstance(worker_id, str) or not isinstance(http, str) or not http.startswith("http://"):
            return None
        return cls(worker_id, http)


class Heartbeat:
    """Keep this worker's registration alive: one owned task, every ``ttl / 3`` seconds."""

    def __init__(self, url: str, registration: Registration, ttl: float = 10.0, timeout: float = 1.0) -> None:
        import redis.asyncio as aioredis

        self.registration = registration
        self.ttl = ttl
        self.timeout = timeout
        self._client: Any = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._task: asyncio.Task[None] | None = None
        self.beats = 0

    async def beat(self) -> bool:
        from redis.exceptions import RedisError

        key = registration_key(self.registration.worker_id)
        try:
            await asyncio.wait_for(
                self._client.set(key, self.registration.to_json(), px=int(self.ttl * 1000)), self.timeout
            )
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("could not register in redis (%s); retrying", type(exc).__name__)
            return False
        self.beats += 1
        return True

    async def _run(self) -> None:
        while True:
            await self.beat()
            await asyncio.sleep(self.ttl / 3)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def leave(self) -> None:
        """Stop beating and delete the key (best effort: it expires anyway)."""
        from redis.exceptions import RedisError

        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await asyncio.wait_for(self._client.delete(registration_key(self.registration.worker_id)), self.timeout)
        except (RedisError, OSError, TimeoutError):
            pass

    async def close(self) -> None:
        await self.leave()
        await self._client.aclose()
