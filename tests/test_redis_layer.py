"""The Redis layer against a real redis-server: shared, bounded in time, failing open."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cache.breaker import CircuitBreaker
from cache.redis_store import RedisStore
from cache.response_cache import ResponseCache
from tests.harness import RedisServer


def test_store_and_fetch_through_two_caches(redis_server: RedisServer) -> None:
    async def main() -> None:
        a = ResponseCache(1 << 20, ttl=60, remote=RedisStore(redis_server.url))
        b = ResponseCache(1 << 20, ttl=60, remote=RedisStore(redis_server.url))
        assert a.put("affinity:v2:test:{1}", b'{"outputs":[1]}', "w:1")
        await a.close()  # waits for the background store
        assert b.get_local("affinity:v2:test:{1}") is None
        found = await b.get_remote("affinity:v2:test:{1}")
        assert found is not None and (found.body, found.served_by) == (b'{"outputs":[1]}', "w:1")
        assert b.get_local("affinity:v2:test:{1}") == found, "a Redis hit is copied into the local layer"
        await b.close()

    asyncio.run(main())


def test_oversized_entries_are_not_stored() -> None:
    async def main() -> None:
        cache = ResponseCache(1 << 20, max_entry=10)
        assert not cache.put("k", b"x" * 11, "w:1")
        assert cache.get_local("k") is None

    asyncio.run(main())


def test_redis_down_is_a_miss_and_the_breaker_recovers(logdir: Path) -> None:
    server = RedisServer(logdir).start()
    now = [0.0]
    store = RedisStore(server.url, timeout=0.1, breaker=CircuitBreaker(threshold=3, cooldown=5, clock=lambda: now[0]))

    async def main() -> None:
        assert await store.set("k", b"v", 60)
        server.stop()
        for _ in range(3):
            assert await asyncio.wait_for(store.get("k"), 1.0) is None
        assert store.breaker.state == "open"
        assert await store.get("k") is None and store.errors == 3, "an open breaker does not call Redis"
        server.start()
        now[0] = 10.0
        assert await store.set("k", b"again", 60), "the half-open probe succeeds once Redis is back"
        assert store.breaker.state == "closed"
        assert await store.get("k") == b"again"
        await store.close()

    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_one_process_claims_a_key_the_others_wait_for_its_answer(redis_server: RedisServer) -> None:
    async def main() -> None:
        a = ResponseCache(1 << 20, ttl=60, remote=RedisStore(redis_server.url))
        b = ResponseCache(1 << 20, ttl=60, remote=RedisStore(redis_server.url))
        assert b.remote is not None
        key = "affinity:v2:test:{claimed}"
        assert await a.claim_or_wait(key, 5.0) is None, "the first to miss computes"
        waiting = asyncio.ensure_future(b.claim_or_wait(key, 5.0))
        await asyncio.sleep(0.05)
        assert not waiting.done(), "the second waits"
        a.put(key, b'{"outputs":[7]}', "w:1", release=True)
        found = await asyncio.wait_for(waiting, 5.0)
        assert found is not None and found.body == b'{"outputs":[7]}'
        claimed, stored = await b.remote.claim(key, 5.0)
        assert not claimed and stored is not None, "a late claimer finds the answer instead of computing it"
        assert await b.remote.get("affinity:lock:{claimed}") is None, "and leaves no lock behind"
        await a.close()
        await b.close()

    asyncio.run(main())


def test_a_holder_that_stores_nothing_releases_its_waiters(redis_server: RedisServer) -> None:
    async def main() -> None:
        a = ResponseCache(1 << 20, ttl=60, remote=RedisStore(redis_server.url))
        b = ResponseCache(1 << 20, ttl=60, remote=RedisStore(redis_server.url))
        key = "affinity:v2:test:{abandoned}"
        assert await a.claim_or_wait(key, 30.0) is None
        waiting = asyncio.ensure_future(b.claim_or_wait(key, 30.0))
        await asyncio.sleep(0.05)
        a.release(key)  # e.g. the answer was a 500: nothing to store
        assert await asyncio.wait_for(waiting, 5.0) is None, "the waiter stops waiting and goes upstream itself"
        await a.close()
        await b.close()

    asyncio.run(main())


def test_an_entry_that_is_not_ours_is_a_counted_miss(redis_server: RedisServer) -> None:
    async def main() -> None:
        cache = ResponseCache(1 << 20, ttl=60, remote=RedisStore(redis_server.url))
        assert cache.remote is not None
        await cache.remote.set("affinity:v2:test:{hostile}", b'AF2\n["w\\r\\nX-Evil: 1","application/json",0]\n{}', 60)
        assert await cache.get_remote("affinity:v2:test:{hostile}") is None
        assert cache.invalid == 1
        await cache.close()

    asyncio.run(main())
