"""The response cache's decisions for one request, in one place.

- cacheable: the model is deterministic, has not opted out, and the workers
  agree on the version's weights (``ModelInfo.scope``);
- flags: ``Cache-Control: no-cache`` skips the lookup, ``no-store`` the store;
  with both (or an uncacheable model) the body is not even parsed;
- key: ``cache.keys`` over typed tensors, scoped by model, version and weights;
  a payload seen before (no ``id``, no Cache-Control) finds its key in a memo of
  raw bodies with no JSON work at all;
- large bodies never stall the event loop: above ``large_body`` bytes the
  memo's digest is taken in a thread (hashlib releases the GIL) and the key is
  derived in a separate process (``cache.key_process``), so cache hits keep
  flowing meanwhile;
- store rule: a 200 JSON answer of a request whose plan says store, without its
  ``id`` (spliced back on every hit), within the entry size limit, for the
  model's TTL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

import orjson

from balancer.index import ModelInfo
from balancer.plan import InferCall, RequestPlan
from cache.entry import CachedAnswer
from cache.key_process import KeyProcess
from cache.keys import KeyMemo, json_key_request, request_id_of, typed_key
from cache.response_cache import ResponseCache
from protocol.json_body import loads_object, strip_id

log = logging.getLogger(__name__)

JSON = "application/json"
LARGE_BODY = 128 << 10

# Why an answer was not stored, for affinity_cache_skips_total.
SKIP_REASONS = ("no_store", "not_cacheable", "not_ok", "not_json", "too_large")


def cache_flags(header: str | None) -> tuple[bool, bool]:
    """(lookup, store) as a request's Cache-Control allows."""
    if header is None:
        return True, True
    directives = {d.strip().lower() for d in header.split(",")}
    return "no-cache" not in directives, "no-store" not in directives


class CacheRules:
    def __init__(
        self,
        cache: ResponseCache,
        on_store: Callable[[str], None] = lambda outcome: None,
        large_body: int = LARGE_BODY,
    ) -> None:
        self.cache = cache
        self.memo = KeyMemo()
        self.large_body = large_body
        self._on_store = on_store  # "stored" or a reason from SKIP_REASONS
        self._threads: Executor | None = None
        self.key_process = KeyProcess()

    def memo_hit(self, info: ModelInfo, version: str, call: InferCall) -> CachedAnswer | None:
        """A repeated small payload's answer, found by its raw bytes (no parsing)."""
        if call.cache_control is not None or len(call.body) > self.large_body:
            return None
        scope = info.scope(version)
        if scope is None:
            return None
        key = self.memo.get(scope, self.memo.ref(call.body))
        return self.cache.get_local(key) if key is not None else None

    def plan(self, info: ModelInfo, version: str, call: InferCall, started: float) -> RequestPlan | None:
        """The plan, decided on the event loop; None when the body is large and
        needs ``plan_large`` (off the loop)."""
        lookup, store = cache_flags(call.cache_control)
        scope = info.scope(version)
        if scope is None or not (lookup or store):
            if scope is None and store:
                self._on_store("not_cacheable")
            elif store is False:
                self._on_store("no_store")
            return RequestPlan(info.name, version, None, None, False, False, started, info.cache_ttl)
        if len(call.body) > self.large_body:
            return None
        obj = loads_object(call.body)
        request_id = request_id_of(obj)
        key = typed_key(scope, json_key_request(obj))
        if request_id is None:
            self.memo.put(scope, self.memo.ref(call.body), key)
        if not store:
            self._on_store("no_store")
        return RequestPlan(info.name, version, key, request_id, lookup, store, started, info.cache_ttl)

    async def plan_large(self, info: ModelInfo, version: str, call: InferCall, started: float) -> RequestPlan:
        lookup, store = cache_flags(call.cache_control)
        scope = info.scope(version)
        assert scope is not None
        loop = asyncio.get_running_loop()
        body = call.body
        ref = await loop.run_in_executor(self._thread_pool(), self.memo.ref, body)
        key = self.memo.get(scope, ref)
        request_id = None
        if key is None:
            derived, request_id = await self.key_process.derive(body, scope)
            if request_id is None:
                self.memo.put(scope, ref, derived)
            key = derived
        if not store:
            self._on_store("no_store")
        return RequestPlan(info.name, version, key, request_id, lookup, store, started, info.cache_ttl)

    async def start(self) -> None:
        """Start the key process before the balancer reports ready."""
        await self.key_process.start()

    def _thread_pool(self) -> Executor:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(2, thread_name_prefix="digest")
        return self._threads

    def keep(self, plan: RequestPlan, status: int, content_type: str, body: bytes, worker: str) -> bytes | None:
        """The id-free body of a 200 JSON answer (stored when the plan says so), or
        None when the answer can be neither stored nor shared by splicing. A
        process holding the key's Redis lock gives it up either way."""
        stripped: bytes | None = None
        reason = ""
        if status != 200:
            reason = "not_ok"
        elif not content_type.startswith(JSON):
            reason = "not_json"
        else:
            try:
                stripped = strip_id(body, plan.request_id)
            except orjson.JSONDecodeError:
                reason = "not_json"
        stored = False
        if plan.store and plan.key is not None:
            if stripped is None:
                self._on_store(reason)
            else:
                stored = self.cache.put(plan.key, stripped, worker, plan.cache_ttl, release=plan.lookup)
                self._on_store("stored" if stored else "too_large")
        if plan.lookup and plan.key is not None and not stored:
            self.cache.release(plan.key)  # waiting balancers go upstream themselves
        return stripped

    async def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        await self.key_process.close()
