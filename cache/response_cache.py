"""The response cache: an in-process LRU in front of an optional Redis layer.

Lookups try the LRU synchronously first (the hit path takes no await), then
Redis; a Redis hit is copied into the LRU. Stores go into the LRU at once and
to Redis in an owned background task, so a miss never waits on Redis. With no
Redis URL the LRU alone is the cache (the embedded default).
"""

from __future__ import annotations

import asyncio
import logging

from cache.entry import CachedAnswer
from cache.lru import ByteLRU
from cache.redis_store import RedisStore

log = logging.getLogger(__name__)

MAX_PENDING_STORES = 1024


class ResponseCache:
    def __init__(
        self,
        capacity: int,
        ttl: int = 3600,
        max_entry: int = 1 << 20,
        remote: RedisStore | None = None,
    ) -> None:
        self.local: ByteLRU[CachedAnswer] = ByteLRU(capacity)
        self.remote = remote
        self.ttl = ttl
        self.max_entry = max_entry
        self._pending: set[asyncio.Task[bool]] = set()

    def get_local(self, key: str) -> CachedAnswer | None:
        return self.local.get(key)

    async def get_remote(self, key: str) -> CachedAnswer | None:
        if self.remote is None:
            return None
        raw = await self.remote.get(key)
        if raw is None:
            return None
        try:
            answer = CachedAnswer.from_bytes(raw)
        except ValueError:
            log.warning("dropping an unreadable cache entry")
            return None
        self.local.put(key, answer)
        return answer

    def put(self, key: str, answer: CachedAnswer) -> bool:
        """Store an answer; False when it is over the entry size limit."""
        if len(answer.body) > self.max_entry:
            return False
        self.local.put(key, answer)
        if self.remote is not None and len(self._pending) < MAX_PENDING_STORES:
            task = asyncio.get_running_loop().create_task(self.remote.set(key, answer.to_bytes(), self.ttl))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        return True

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self.remote is not None:
            await self.remote.close()
