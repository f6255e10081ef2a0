"""The response cache: an in-process LRU in front of an optional Redis layer.

Lookups try the LRU synchronously first (the hit path takes no await), then
Redis; a Redis hit is checked (``CachedAnswer.from_bytes``) and copied into the
LRU. Stores go into the LRU at once and to Redis in an owned background task,
so a miss never waits on Redis. Entries expire after their TTL in both layers.
With no Redis URL the LRU alone is the cache (the embedded default).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from cache.entry import JSON, CachedAnswer, InvalidEntry
from cache.lru import ByteLRU
from cache.redis_store import RedisStore

log = logging.getLogger(__name__)

MAX_PENDING_STORES = 1024
# An LRU item besides its entry and key text: the map's node, the key's str object and
# its count (CPython 3.11, 64-bit; measured with tracemalloc).
LRU_ITEM_OVERHEAD = 200


class ResponseCache:
    def __init__(
        self,
        capacity: int,
        ttl: float = 3600,
        max_entry: int = 1 << 20,
        remote: RedisStore | None = None,
    ) -> None:
        self.local: ByteLRU[CachedAnswer] = ByteLRU(capacity, LRU_ITEM_OVERHEAD)
        self.remote = remote
        self.ttl = ttl
        self.max_entry = max_entry
        self.invalid = 0  # entries read from Redis and refused
        self._pending: set[asyncio.Task[Any]] = set()

    def recount(self, key: str) -> None:
        """Count an entry's memory again after it memoised another rendering."""
        self.local.recount(key)

    def get_local(self, key: str) -> CachedAnswer | None:
        answer = self.local.get(key)
        if answer is not None and answer.expires <= time.monotonic():
            self.local.pop(key)
            return None
        return answer

    async def get_remote(self, key: str) -> CachedAnswer | None:
        if self.remote is None:
            return None
        raw = await self.remote.get(key)
        return None if raw is None else self._admit(key, raw)

    async def claim_or_wait(self, key: str, hold: float) -> CachedAnswer | None:
        """Coalescing across processes: None when this process should compute the
        answer (it holds the key's lock now, or Redis cannot say); otherwise the
        answer another process computed, waited for up to ``hold`` seconds (None
        again when it gave up or took too long: compute it then)."""
        if self.remote is None:
            return None
        claimed, raw = await self.remote.claim(key, hold)
        if raw is None and not claimed:
            raw = await self.remote.wait(key, hold)
        return None if raw is None else self._admit(key, raw)

    def _admit(self, key: str, raw: bytes) -> CachedAnswer | None:
        try:
            answer = CachedAnswer.from_bytes(raw)
        except InvalidEntry:
            self.invalid += 1
            log.debug("refused an unreadable cache entry")
            return None
        if answer.expires <= time.monotonic():
            return None
        self.local.put(key, answer)
        return answer

    def fits(self, body: bytes) -> bool:
        return len(body) <= self.max_entry

    def put(
        self,
        key: str,
        body: bytes,
        served_by: str,
        ttl: float | None = None,
        release: bool = False,
        content_type: str = JSON,
        header_length: int = 0,
    ) -> CachedAnswer | None:
        """Store an answer (JSON, or the binary extension with its header length) in
        both layers; None when it is over the entry size limit. ``release``: this
        process holds the key's Redis lock; drop it with the store."""
        if not self.fits(body):
            return None
        ttl = self.ttl if ttl is None else ttl
        answer = CachedAnswer(body, served_by, content_type, time.monotonic() + ttl, header_length)
        self.local.put(key, answer)
        if self.remote is not None:
            store = self.remote.set_and_release if release else self.remote.set
            self._background(store(key, answer.to_bytes(), ttl))
        return answer

    def release(self, key: str) -> None:
        """Give up this process's Redis lock on ``key`` (no answer will be stored)."""
        if self.remote is not None:
            self._background(self.remote.release(key))

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        if len(self._pending) >= MAX_PENDING_STORES:
            work.close()
            return
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self.remote is not None:
            await self.remote.close()
