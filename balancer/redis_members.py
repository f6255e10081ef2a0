"""Redis discovery: ``--workers-redis URL`` lists the workers registered there.

Workers keep ``affinity:workers:<id>`` alive with a TTL
(``common.registration``); the balancer lists those keys on its discovery
interval (``SCAN`` then ``MGET``: never ``KEYS``, which blocks the server). A
worker that drains deletes its key and leaves; one that dies leaves when its
key expires. When Redis cannot be reached, None: the last known workers stay.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from common.registration import KEY_PREFIX, Registration

log = logging.getLogger(__name__)


class RedisSource:
    name = "redis"

    def __init__(self, url: str, timeout: float = 1.0) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.timeout = timeout
        self._client: Any = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)

    async def _list(self) -> tuple[str, ...]:
        keys = [key async for key in self._client.scan_iter(match=KEY_PREFIX + "*", count=1000)]
        if not keys:
            return ()
        found = []
        for raw in await self._client.mget(keys):
            registration = Registration.from_json(raw) if raw is not None else None
            if registration is not None:
                found.append(registration.http)
        return tuple(sorted(set(found)))

    async def addresses(self) -> tuple[str, ...] | None:
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(self.timeout * 4):
                return await self._list() or None
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis discovery failed (%s); keeping the last known workers", type(exc).__name__)
            return None

    async def close(self) -> None:
        await self._client.aclose()
