"""The response cache's decisions for one request, in one place.

- cacheable: the model is deterministic and has not opted out (from the index);
- flags: ``Cache-Control: no-cache`` skips the lookup, ``no-store`` the store;
- key: ``cache.keys.cache_key`` over model, resolved version and the canonical
  request without its ``id``; a payload seen before (no ``id``, no
  Cache-Control) finds its key in the memo with no JSON work at all;
- store rule: a 200 JSON answer of a request whose plan says store, without its
  ``id`` (spliced back on every hit), within the entry size limit.
"""

from __future__ import annotations

from typing import Any

import orjson

from balancer.index import ModelInfo
from balancer.plan import InferCall, RequestPlan
from cache.entry import CachedAnswer
from cache.keys import KeyMemo, cache_key, canonical_request
from cache.response_cache import ResponseCache
from protocol.json_body import strip_id

JSON = "application/json"


def cache_flags(header: str | None) -> tuple[bool, bool]:
    """(lookup, store) as a request's Cache-Control allows."""
    if header is None:
        return True, True
    directives = {d.strip().lower() for d in header.split(",")}
    return "no-cache" not in directives, "no-store" not in directives


class CacheRules:
    def __init__(self, cache: ResponseCache, memo: KeyMemo | None = None) -> None:
        self.cache = cache
        self.memo = memo or KeyMemo()

    def memo_hit(self, info: ModelInfo, version: str, call: InferCall) -> CachedAnswer | None:
        """A repeated payload's answer, found by its raw bytes (no parsing)."""
        if call.cache_control is not None or not (info.cacheable and info.deterministic):
            return None
        if not self.memo.eligible(call.body):
            return None
        key = self.memo.get(info.name, version, call.body)
        return self.cache.get_local(key) if key is not None else None

    def plan(
        self,
        info: ModelInfo,
        version: str,
        call: InferCall,
        obj: dict[str, Any],
        request_id: str | None,
        started: float,
    ) -> RequestPlan:
        lookup, store = cache_flags(call.cache_control)
        key = None
        if info.cacheable and info.deterministic and (lookup or store):
            key = cache_key(info.name, version, canonical_request(obj))
            if self.memo.eligible(call.body):
                self.memo.put(info.name, version, call.body, key)
        else:
            lookup = store = False
        return RequestPlan(info.name, version, key, request_id, lookup, store, started)

    def keep(self, plan: RequestPlan, status: int, content_type: str, body: bytes, worker: str) -> bytes | None:
        """The id-free body of a 200 JSON answer (stored when the plan says so), or
        None when the answer can be neither stored nor shared by splicing."""
        if status != 200 or not content_type.startswith(JSON):
            return None
        try:
            stripped = strip_id(body, plan.request_id)
        except orjson.JSONDecodeError:
            return None  # not JSON after all
        if plan.store and plan.key is not None:
            self.cache.put(plan.key, CachedAnswer(stripped, worker))
        return stripped
