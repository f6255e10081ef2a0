"""The response cache's decisions for one request, in one place.

- cacheable: the model is deterministic, has not opted out, and the workers
  agree on the version's weights (``ModelInfo.scope``);
- flags: ``Cache-Control: no-cache`` skips the lookup, ``no-store`` the store;
  with both (or an uncacheable model) the body is still checked as a key would
  be (nothing a worker would refuse as malformed is forwarded), its key unused;
- key: ``cache.keys`` over typed tensors, scoped by model, version and weights,
  whatever the encoding (a JSON body, the binary extension's raw bytes, a gRPC
  message's raw or typed contents: the same tensors, the same key); a JSON
  payload seen before (no ``id``, no Cache-Control, no binary choices) finds its
  key in a memo of raw bodies with no JSON work at all;
- rendering: how the request wants its answer (``balancer.renderings``);
- large bodies never stall the event loop: above ``large_body`` bytes the
  memo's digest is taken in a thread (hashlib releases the GIL) and the key is
  derived in a separate process (``cache.key_process``), so cache hits keep
  flowing meanwhile;
- large binary and gRPC requests are keyed in a thread (hashing raw bytes
  releases the GIL; there is no JSON to parse);
- store rule: a 200 answer (JSON, binary extension, or protobuf kept in the
  binary form) of a request whose plan says store, without its ``id`` (spliced
  back on every hit), within the entry size limit, for the model's TTL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import orjson

from balancer.index import ModelInfo
from balancer.plan import InferCall, RequestPlan
from balancer.renderings import GRPC_CONTENT_TYPE, GRPC_RENDERING, Rendering
from cache.entry import BINARY, CachedAnswer
from cache.key_process import KeyProcess
from cache.keys import KeyMemo, KeyRequest, KeyScope, key_request, request_id_of, typed_key
from cache.response_cache import ResponseCache
from protocol import binary_codec, grpc_messages
from protocol.errors import ProtocolError
from protocol.json_body import loads_object, strip_id

log = logging.getLogger(__name__)

JSON = "application/json"
LARGE_BODY = 128 << 10

# Why an answer was not stored, for affinity_cache_skips_total.
SKIP_REASONS = ("no_store", "not_cacheable", "not_ok", "not_json", "too_large")


def scope_of(info: ModelInfo, version: str, tenant: str) -> KeyScope | None:
    """The cache scope of a version's answers for a tenant (API keys): each tenant's
    keys live in its own namespace, so no tenant is answered from another's entry."""
    scope = info.scope(version)
    if tenant and scope is not None:
        scoped = info.tenant_scopes.get((version, tenant))
        if scoped is None:
            scoped = info.tenant_scopes[version, tenant] = scope._replace(namespace=tenant)
        return scoped
    return scope


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
        upstream_binary: bool = False,
    ) -> None:
        self.cache = cache
        self.upstream_binary = upstream_binary
        self.memo = KeyMemo()
        self.large_body = large_body
        self._on_store = on_store  # "stored" or a reason from SKIP_REASONS
        self._threads: Executor | None = None
        self.key_process = KeyProcess()

    def memo_hit(self, info: ModelInfo, version: str, call: InferCall) -> tuple[str, CachedAnswer] | None:
        """A repeated small JSON payload's key and answer, found by its raw bytes (no parsing)."""
        if call.cache_control is not None or len(call.body) > self.large_body or call.encoding != "json":
            return None
        scope = scope_of(info, version, call.tenant)
        if scope is None:
            return None
        key = self.memo.get(scope, self.memo.ref(call.body))
        if key is None:
            return None
        hit = self.cache.get_local(key)
        return None if hit is None else (key, hit)

    def plan(self, info: ModelInfo, version: str, call: InferCall, started: float) -> RequestPlan | None:
        """The plan, decided on the event loop; None when the body is large and
        needs ``plan_large`` (off the loop)."""
        lookup, store = cache_flags(call.cache_control)
        scope = scope_of(info, version, call.tenant)
        if len(call.body) > self.large_body:
            return None
        if scope is None or not (lookup or store):
            checked = check_request(call, KeyScope(info.name, version))
            plan = self._bypass(info, version, scope, store, started)
            if checked is not None and self.upstream_binary:
                obj, keyed = checked
                if not binary_codec.output_encoding(obj.get("parameters"), obj.get("outputs")).any_binary:
                    plan.typed = (obj, keyed)
            return plan
        typed = None
        if call.encoding == "json":
            obj = loads_object(call.body)
            request_id = request_id_of(obj)
            keyed = key_request(obj)
            key = typed_key(scope, keyed)
            rendering = Rendering("rest", binary_codec.output_encoding(obj.get("parameters"), obj.get("outputs")))
            if not rendering.outputs.any_binary:
                if request_id is None:  # the memo's answers are plain JSON
                    self.memo.put(scope, self.memo.ref(call.body), key)
                if self.upstream_binary:
                    typed = (obj, keyed)  # packed for the worker only if the request goes there
        else:
            key, request_id, rendering = derive_key(call, scope)
        if not store:
            self._on_store("no_store")
        return RequestPlan(
            info.name, version, key, request_id, lookup, store, started, info.cache_ttl, rendering, typed
        )

    def _bypass(
        self, info: ModelInfo, version: str, scope: KeyScope | None, store: bool, started: float
    ) -> RequestPlan:
        """A request whose answer is neither looked up nor stored (already checked)."""
        if scope is None and store:
            self._on_store("not_cacheable")
        elif store is False:
            self._on_store("no_store")
        return RequestPlan(info.name, version, None, None, False, False, started, info.cache_ttl)

    async def plan_large(self, info: ModelInfo, version: str, call: InferCall, started: float) -> RequestPlan:
        lookup, store = cache_flags(call.cache_control)
        scope = scope_of(info, version, call.tenant)
        loop = asyncio.get_running_loop()
        if scope is None or not (lookup or store):  # checked as a key would be, off the loop; the key unused
            unscoped = KeyScope(info.name, version)
            if call.encoding == "json":
                await self.key_process.derive(call.body, unscoped)
            else:
                await loop.run_in_executor(self._thread_pool(), derive_key, call, unscoped)
            return self._bypass(info, version, scope, store, started)
        if call.encoding != "json":
            derived_key, derived_id, derived_as = await loop.run_in_executor(
                self._thread_pool(), derive_key, call, scope
            )
            if not store:
                self._on_store("no_store")
            return RequestPlan(
                info.name, version, derived_key, derived_id, lookup, store, started, info.cache_ttl, derived_as
            )
        body = call.body
        ref = await loop.run_in_executor(self._thread_pool(), self.memo.ref, body)
        key = self.memo.get(scope, ref)
        request_id = None
        rendering = Rendering()  # a remembered body asked for plain JSON
        if key is None:
            derived, request_id, encoding = await self.key_process.derive(body, scope)
            rendering = Rendering("rest", encoding)
            if request_id is None and not encoding.any_binary:
                self.memo.put(scope, ref, derived)
            key = derived
        if not store:
            self._on_store("no_store")
        return RequestPlan(info.name, version, key, request_id, lookup, store, started, info.cache_ttl, rendering)

    async def start(self) -> None:
        """Start the key process before the balancer reports ready."""
        await self.key_process.start()

    def _thread_pool(self) -> Executor:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(2, thread_name_prefix="digest")
        return self._threads

    def keep(
        self, plan: RequestPlan, status: int, content_type: str, body: bytes, worker: str, header_length: int = 0
    ) -> tuple[bytes, int] | None:
        """The id-free body of a 200 answer and its binary header's length (stored
        when the plan says so), or None when the answer can be neither stored nor
        shared by splicing. A process holding the key's Redis lock gives it up
        either way."""
        stripped: tuple[bytes, int] | None = None
        canonical: tuple[bytes, str, int] | None = None
        reason = ""
        try:
            if status != 200:
                reason = "not_ok"
            elif content_type.startswith(JSON):
                stripped = (strip_id(body, plan.request_id), 0)
                canonical = (stripped[0], JSON, 0)
            elif content_type.startswith(BINARY) and header_length:
                stripped = binary_codec.strip_binary_id(body, header_length, plan.request_id)
                canonical = (stripped[0], BINARY, stripped[1])
            elif content_type.startswith(GRPC_CONTENT_TYPE):
                msg = grpc_messages.pb.ModelInferResponse.FromString(body)
                stripped = (grpc_messages.strip_proto_id(body, msg)[0], 0)
                raw = grpc_messages.response_from_proto(msg)
                binary, length = binary_codec.render_binary(raw, binary_codec.BINARY_OUTPUTS)
                canonical = (binary, BINARY, length)
            else:
                reason = "not_json"
        except (orjson.JSONDecodeError, ProtocolError, ValueError):  # protobuf's DecodeError is a ValueError
            stripped, canonical, reason = None, None, "not_json"
        stored: CachedAnswer | None = None
        if plan.store and plan.key is not None:
            if canonical is None:
                self._on_store(reason)
            else:
                entry_body, entry_type, entry_length = canonical
                stored = self.cache.put(
                    plan.key, entry_body, worker, plan.cache_ttl, plan.lookup, entry_type, entry_length
                )
                if stored is not None and stripped is not None and plan.rendering == GRPC_RENDERING:
                    stored.renderings[GRPC_RENDERING] = stripped  # the worker's own bytes, as the miss answered
                    self.cache.recount(plan.key)
                self._on_store("stored" if stored is not None else "too_large")
        if plan.lookup and plan.key is not None and stored is None:
            self.cache.release(plan.key)  # waiting balancers go upstream themselves
        return stripped

    async def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        await self.key_process.close()


def check_request(call: InferCall, scope: KeyScope) -> tuple[dict[str, Any], KeyRequest] | None:
    """BadRequest (or PayloadTooLarge) where a request is malformed: the checks a key
    takes, for a request whose answer will not be cached, so that nothing a worker
    would refuse as malformed is forwarded. A JSON request's object and typed content."""
    if call.encoding == "json":
        obj = loads_object(call.body)
        request_id_of(obj)
        return obj, key_request(obj)
    derive_key(call, scope)
    return None


def binary_hop(obj: dict[str, Any], keyed: KeyRequest) -> tuple[bytes, int] | None:
    """A JSON request as the binary tensor extension, for the hop to the worker: its
    tensors were packed once here for the key, so the worker reads raw bytes instead
    of parsing a list of numbers per element (measured: ~5x less decoding work for
    512 FP32 values). BYTES inputs go as they came (their JSON strings are the
    caller's form; the worker reads them as such)."""
    if any(t.datatype == "BYTES" for t in keyed.inputs):
        return None
    return binary_codec.request_from_raw(obj, keyed.inputs)


def derive_key(call: InferCall, scope: KeyScope) -> tuple[str, str | None, Rendering]:
    """(key, request id, rendering) of a binary-extension or gRPC request: a pure
    function, so a large one's can run in a thread."""
    if call.encoding == "binary":
        assert call.header_length is not None
        header, binary = binary_codec.split(call.body, call.header_length)
        rendering = Rendering("rest", binary_codec.output_encoding(header.get("parameters"), header.get("outputs")))
        return typed_key(scope, key_request(header, binary)), request_id_of(header), rendering
    msg = call.message if call.message is not None else grpc_messages.parse_request(call.body)
    content = KeyRequest(
        grpc_messages.request_inputs(msg),
        grpc_messages.requested_outputs(msg),
        grpc_messages.parameters_from_proto(msg.parameters),
    )
    return typed_key(scope, content), msg.id or None, GRPC_RENDERING


LARGE_MESSAGE = LARGE_BODY  # a gRPC message past this is parsed off the event loop, with its key
