"""The balancer's transport-free service: the request path, steps 1-7.

    1 model (+ version) checked against the cached index (unknown: one refresh, then 404)
    2 a plan: resolved version, cache key over the canonical inputs (not the id), flags
    3 in-process LRU, then Redis: a hit answers at once (X-Cache: hit)
    4 a miss joins an identical request in flight, or goes upstream
    5-6 the router picks a worker by policy and retries on the next candidate
    7 a 2xx answer of a deterministic, cacheable model is stored

The hot path is synchronous as far as it can be: an in-process hit is answered
without creating a task or awaiting anything; ``infer`` returns an awaitable
only when it must wait (an index refresh, Redis, a worker). Each request's
metrics are recorded once, in ``_record``. Fronts (REST handlers, the gRPC
servicer) translate their wire format into ``InferCall`` and render ``Answer``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import orjson

from balancer.caching import CacheRules, binary_hop
from balancer.config import BalancerConfig
from balancer.errors import UpstreamError
from balancer.grpc_client import GrpcUpstream
from balancer.index import ModelIndex, ModelInfo
from balancer.members import Members
from balancer.metrics import BalancerMetrics
from balancer.plan import Answer, InferCall, RequestPlan
from balancer.renderings import JSON_RENDERING, Rendering, render, with_id
from balancer.router import Router
from balancer.transport import UpstreamResponse
from cache.entry import CachedAnswer
from cache.response_cache import ResponseCache
from common import __version__
from common.singleflight import SingleFlight
from protocol import binary_codec
from protocol.errors import (
    DeadlineExceeded,
    ProtocolError,
    UpstreamUnavailable,
    VersionNotFound,
    error_for_status,
)
from protocol.json_body import splice_id
from protocol.names import check_name, check_version
from protocol.stats import ModelStats, combine, parse_stats_body
from protocol.types import ServerMetadata

SERVER_NAME = "affinity-serve"
EXTENSIONS = ("model_repository", "statistics", "binary_tensor_data")
JSON = "application/json"

Outcome = Answer | Awaitable[Answer]


@dataclass(slots=True)
class Upstream:
    """What one upstream call produced, shared by coalesced callers."""

    response: UpstreamResponse
    worker: str
    request_id: str | None
    stripped: tuple[bytes, int] | None = None  # id-free body (and binary header length) of a 200 answer
    cache: str = ""  # "hit" when another balancer computed it (found in Redis while waiting)


def resolve_version(info: ModelInfo, version: str | None) -> str:
    """The version that will serve the request: the one named, or the latest."""
    if version is None:
        return info.latest
    if version not in info.versions:
        check_version(version)
        raise VersionNotFound(info.name, version)
    return version


class BalancerService:
    def __init__(
        self,
        config: BalancerConfig,
        members: Members,
        index: ModelIndex,
        router: Router,
        cache: ResponseCache,
        metrics: BalancerMetrics,
        grpc: GrpcUpstream | None = None,
    ) -> None:
        self.config = config
        self.members = members
        self.index = index
        self.router = router
        self.cache = cache
        self.rules = CacheRules(cache, metrics.store_outcome, upstream_binary=config.upstream_encoding == "binary")
        self.metrics = metrics
        metrics.watch_cache(cache)
        self.flights: SingleFlight[Upstream] = SingleFlight()
        self.draining = False
        self.grpc = grpc  # the gRPC client to the workers, when the gRPC front is on

    # inference

    def infer(self, call: InferCall) -> Outcome:
        started = time.perf_counter()
        try:
            info = self.index.get(call.model)
            outcome = self._infer(call, info, started) if info is not None else self._infer_unknown(call, started)
        except ProtocolError as exc:
            self._record(call, exc.status, "miss", started)
            raise
        if isinstance(outcome, Answer):
            self._record(call, outcome.status, outcome.cache, started)
            return outcome
        return self._recorded(call, outcome, started)

    async def _recorded(self, call: InferCall, outcome: Awaitable[Answer], started: float) -> Answer:
        try:
            answer = await outcome
        except ProtocolError as exc:
            self._record(call, exc.status, "miss", started)
            raise
        self._record(call, answer.status, answer.cache, started)
        return answer

    def _record(self, call: InferCall, status: int, cache: str, started: float) -> None:
        self.metrics.observe(call.model, status, cache, time.perf_counter() - started, call.protocol)

    async def _infer_unknown(self, call: InferCall, started: float) -> Answer:
        info = await self.index.require(check_name(call.model))
        outcome = self._infer(call, info, started)
        return outcome if isinstance(outcome, Answer) else await outcome

    def _infer(self, call: InferCall, info: ModelInfo, started: float) -> Outcome:
        """Everything that can be decided without waiting; a hit is answered here."""
        version = resolve_version(info, call.version)
        memo = self.rules.memo_hit(info, version, call)
        if memo is not None:
            self.metrics.hit("local", info.name)
            key, hit = memo
            return _hit(hit, None) if hit.header_length == 0 else self._rendered_hit(key, hit, JSON_RENDERING, None)
        plan = self.rules.plan(info, version, call, started)
        if plan is None:
            return self._infer_large(call, info, version, started)
        return self._planned(plan, call)

    async def _infer_large(self, call: InferCall, info: ModelInfo, version: str, started: float) -> Answer:
        plan = await self.rules.plan_large(info, version, call, started)
        outcome = self._planned(plan, call)
        return outcome if isinstance(outcome, Answer) else await outcome

    def _planned(self, plan: RequestPlan, call: InferCall) -> Outcome:
        if plan.lookup:
            assert plan.key is not None
            hit = self.cache.get_local(plan.key)
            if hit is not None:
                self.metrics.hit("local", plan.model)
                return self._hit_as(hit, plan)
            if self.cache.remote is not None:
                return self._remote_then_forward(plan, call)
            self.metrics.miss(plan.model)
        return self._forward(plan, call)

    async def _remote_then_forward(self, plan: RequestPlan, call: InferCall) -> Answer:
        assert plan.key is not None
        began = time.perf_counter()
        hit = await self.cache.get_remote(plan.key)
        self.metrics.lookup.observe(time.perf_counter() - began)
        if hit is not None:
            self.metrics.hit("redis", plan.model)
            return self._hit_as(hit, plan)
        self.metrics.miss(plan.model)
        return await self._forward(plan, call)

    async def _forward(self, plan: RequestPlan, call: InferCall) -> Answer:
        work = self._upstream(plan, call)
        flight = plan.flight
        if flight is not None and plan.lookup:
            result, shared = await self.flights.do(flight, work)
        else:
            result, shared = await work, False
        resp = result.response
        body = resp.body
        content_type = resp.headers.get("Content-Type", JSON)
        length = resp.headers.get(binary_codec.HEADER)
        if shared:
            self.metrics.coalesced.labels("local").value += 1
            if result.stripped is not None and result.request_id != plan.request_id:
                rendered = with_id(*result.stripped, plan.rendering, plan.request_id)
                body, content_type = rendered.body, rendered.content_type
                length = None if rendered.header_length is None else str(rendered.header_length)
        state = result.cache or plan.cache_state
        headers = {"X-Cache": state, "X-Served-By": result.worker}
        for name in ("X-Model-Source", "Retry-After"):
            value = resp.headers.get(name)
            if value is not None:
                headers[name] = value
        if length is not None:
            headers[binary_codec.HEADER] = length
        return Answer(resp.status, body, content_type, state, result.worker, headers)

    async def _upstream(self, plan: RequestPlan, call: InferCall) -> Upstream:
        if plan.lookup and self.cache.remote is not None:
            assert plan.key is not None
            found = await self._computed_elsewhere(plan)
            if found is not None:
                return found
        timeout = call.timeout if call.timeout is not None else self.config.request_timeout
        deadline = time.monotonic() + timeout
        if call.encoding == "grpc":
            resp, worker = await self._grpc_upstream(plan, call, deadline)
        else:
            body, content_type, length = call.body, call.content_type, call.header_length
            packed = None if plan.typed is None else binary_hop(*plan.typed)
            if packed is not None:  # the worker reads raw bytes, not numbers
                (body, length), content_type = packed, binary_codec.CONTENT_TYPE
            extra = None if length is None else {binary_codec.HEADER: str(length)}
            resp, worker = await self.router.send(
                plan.model, "POST", plan.upstream_path, body, content_type, extra, deadline
            )
        result = Upstream(resp, worker, plan.request_id)
        if plan.lookup or plan.store:  # the id-free body is needed only to store or to share
            content_type = resp.headers.get("Content-Type", "")
            length = int(resp.headers.get(binary_codec.HEADER, "0") or 0)
            result.stripped = self.rules.keep(plan, resp.status, content_type, resp.body, worker, length)
        return result

    async def _grpc_upstream(self, plan: RequestPlan, call: InferCall, deadline: float) -> tuple[UpstreamResponse, str]:
        """The gRPC message, forwarded as it came to the workers' gRPC ports, with the
        router's policy and retries; each try gets what the deadline leaves
        (``time.monotonic()`` seconds: the caller's, or the balancer's default)."""
        client, addresses = self.grpc, self.members.addresses
        assert client is not None, "a gRPC call needs the gRPC client"
        try_timeout = self.config.try_timeout

        def attempt(worker: str) -> Awaitable[UpstreamResponse]:
            timeout = min(try_timeout, deadline - time.monotonic())
            if timeout <= 0:
                raise DeadlineExceeded("the request's deadline passed")
            return client.infer(addresses[worker].grpc, call.body, timeout)

        return await self.router.call(plan.model, attempt, deadline)

    async def _computed_elsewhere(self, plan: RequestPlan) -> Upstream | None:
        """Coalescing across balancers: when another balancer holds the key's lock,
        wait (bounded) for the answer it stores; None means go upstream ourselves."""
        assert plan.key is not None and self.cache.remote is not None
        stored = await self.cache.claim_or_wait(plan.key, self.config.cache_lock_timeout)
        if stored is None:
            return None
        self.metrics.coalesced.labels("remote").value += 1
        rendered = render(stored, plan.rendering, plan.request_id)
        headers = {"Content-Type": rendered.content_type}
        if rendered.header_length is not None:
            headers[binary_codec.HEADER] = str(rendered.header_length)
        response = UpstreamResponse(200, rendered.body, headers)
        id_free = render(stored, plan.rendering, None)
        stripped = (id_free.body, id_free.header_length or 0)
        return Upstream(response, stored.served_by, plan.request_id, stripped, "hit")

    # metadata, health, repository

    async def _model(self, name: str, version: str | None) -> ModelInfo:
        info = self.index.get(name) or await self.index.require(check_name(name))
        resolve_version(info, version)
        return info

    async def _ask_owner(self, name: str, version: str | None, suffix: str = "") -> UpstreamResponse:
        await self._model(name, version)
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version is not None else "") + suffix
        resp, _ = await self.router.send(name, "GET", path)
        return resp

    async def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        """The model's metadata, as its owner serves it."""
        return _json_or_raise(await self._ask_owner(name, version))

    async def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        return _json_or_raise(await self._ask_owner(name, version, "/config"))

    async def model_ready(self, name: str, version: str | None) -> bool:
        resp = await self._ask_owner(name, version, "/ready")
        if resp.status == 503:
            return False
        return bool(_json_or_raise(resp).get("ready", False))

    async def model_stats(self, name: str, version: str | None) -> list[ModelStats]:
        """Triton's statistics of the model, summed over every worker that answers
        (a model served by several workers over time has counts on each)."""
        await self._model(name, version)
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version is not None else "") + "/stats"
        transport = self.router.transport

        async def ask(base: str) -> list[ModelStats] | None:
            try:
                resp = await transport.send(base, "GET", path)
                return parse_stats_body(orjson.loads(resp.body)) if resp.status == 200 else None
            except (UpstreamError, ValueError):  # unreachable, or not a statistics answer
                return None

        answers = await asyncio.gather(*(ask(a.http) for a in list(self.members.addresses.values())))
        found = [a for a in answers if a is not None]
        if not found:
            raise UpstreamUnavailable("no worker answered with the model's statistics")
        return combine(found)

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, __version__, EXTENSIONS)

    @property
    def ready(self) -> bool:
        return self.index.loaded and len(self.members) > 0 and not self.draining

    async def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """From the cached index (refreshed on a schedule), never a fan-out per request."""
        if not self.index.loaded:
            await self.index.refresh()
        if not self.index.loaded:
            raise UpstreamUnavailable("no worker answered the repository index")
        return [r for r in self.index.rows if not ready_only or r["state"] == "READY"]

    def _hit_as(self, hit: CachedAnswer, plan: RequestPlan) -> Answer:
        """A hit in the plan's rendering: the stored JSON as it is (the hot path), or
        rendered from the entry (memoised in it)."""
        if plan.rendering == JSON_RENDERING and hit.header_length == 0:
            return _hit(hit, plan.request_id)
        assert plan.key is not None
        return self._rendered_hit(plan.key, hit, plan.rendering, plan.request_id)

    def _rendered_hit(self, key: str, hit: CachedAnswer, rendering: Rendering, request_id: str | None) -> Answer:
        """The hit rendered from the entry; a rendering made now is memoised in the
        entry, which the cache then counts again (its memory grew)."""
        made = len(hit.renderings)
        answer = rendered_hit(hit, rendering, request_id)
        if len(hit.renderings) != made:
            self.cache.recount(key)
        return answer

    def render_metrics(self) -> bytes:
        return self.metrics.render()


def _hit(hit: CachedAnswer, request_id: str | None) -> Answer:
    return Answer(200, splice_id(hit.body, request_id), None, "hit", hit.served_by, None, hit.hit_headers)


def rendered_hit(hit: CachedAnswer, rendering: Rendering, request_id: str | None) -> Answer:
    rendered = render(hit, rendering, request_id)
    headers = {"X-Cache": "hit", "X-Served-By": hit.served_by}
    if rendered.header_length is not None:
        headers[binary_codec.HEADER] = str(rendered.header_length)
    return Answer(200, rendered.body, rendered.content_type, "hit", hit.served_by, headers)


def _json_or_raise(resp: UpstreamResponse) -> dict[str, Any]:
    """A worker's JSON object answer, or its error re-raised as ours (same status, same message)."""
    try:
        obj = orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        obj = None
    if resp.status != 200:
        message = obj.get("error") if isinstance(obj, dict) else None
        raise error_for_status(resp.status, str(message or f"worker answered {resp.status}"))
    if not isinstance(obj, dict):
        raise UpstreamUnavailable("a worker answered with a malformed body")
    return obj
