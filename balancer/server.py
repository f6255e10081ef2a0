"""The balancer's V2 REST handlers: the request path of DESIGN.md, steps 1-7.

    1 model (+ version) from the path, checked against the cached index
    2 cache key from model, resolved version and canonical inputs (not the id)
    3 in-process LRU, then Redis: a hit answers at once (X-Cache: hit)
    4 a miss joins an identical request in flight, or goes upstream
    5-6 the router picks a worker by policy and retries on the next candidate
    7 a 2xx answer of a deterministic, cacheable model is stored

The hot path is synchronous as far as it can be: an in-process hit is
answered without creating a task or awaiting anything; a handler returns a
coroutine only when it must wait (an index refresh, Redis, a worker).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import orjson

from balancer.config import BalancerConfig
from balancer.errors import UpstreamUnavailable
from balancer.index import ModelIndex, ModelInfo
from balancer.members import Members
from balancer.metrics import BalancerMetrics
from balancer.router import Router
from balancer.transport import UpstreamResponse
from cache.entry import CachedAnswer
from cache.keys import KeyMemo, cache_key, canonical_request
from cache.response_cache import ResponseCache
from common import __version__
from common.http_router import Router as HttpRouter
from common.http_server import Request, Response
from common.singleflight import SingleFlight
from protocol.errors import BadRequest, NotFound, ProtocolError
from protocol.json_body import loads_object, splice_id, strip_id
from protocol.names import check_name, check_version
from protocol.rest import JSON, V2Handlers, check_json_request, json_response, v2_router
from protocol.types import ServerMetadata

SERVER_NAME = "affinity-serve"
EXTENSIONS = ("model_repository",)

Outcome = Response | Awaitable[Response]


@dataclass(slots=True)
class Upstream:
    """What one upstream call produced, shared by coalesced callers."""

    response: UpstreamResponse
    worker: str
    request_id: str | None
    stripped: bytes | None = None  # id-free body, when the answer was 2xx JSON


def cache_flags(header: str | None) -> tuple[bool, bool]:
    """(lookup, store) as a request's Cache-Control allows."""
    if header is None:
        return True, True
    directives = {d.strip().lower() for d in header.split(",")}
    return "no-cache" not in directives, "no-store" not in directives


def _answer(body: bytes, status: int, content_type: str, cache: str, worker: str, source: str | None) -> Response:
    headers = {"X-Cache": cache, "X-Served-By": worker}
    if source is not None:
        headers["X-Model-Source"] = source
    return Response(status, body, content_type, headers)


class BalancerService:
    def __init__(
        self,
        config: BalancerConfig,
        members: Members,
        index: ModelIndex,
        router: Router,
        cache: ResponseCache,
        metrics: BalancerMetrics,
    ) -> None:
        self.config = config
        self.members = members
        self.index = index
        self.router = router
        self.cache = cache
        self.metrics = metrics
        self.flights: SingleFlight[Upstream] = SingleFlight()
        self.key_memo = KeyMemo()
        self.draining = False

    def routes(self) -> HttpRouter:
        model_get = self.model_get
        return v2_router(
            V2Handlers(
                infer=self.infer,
                live=self.live,
                ready=self.ready,
                server_metadata=self.server_metadata,
                model_metadata=model_get,
                model_ready=model_get,
                model_config=model_get,
                repository_index=self.repository_index,
                metrics=self.render_metrics,
            )
        )

    # inference

    def infer(self, request: Request) -> Outcome:
        started = time.perf_counter()
        try:
            info = self.index.get(request.match["name"])
            if info is None:
                return self._infer_unknown(request, started)
            return self._infer_known(request, info, started)
        except ProtocolError as exc:
            self._done(request, exc.status, "miss", started)
            raise

    def _done(self, request: Request, status: int, cache: str, started: float) -> None:
        self.metrics.observe(request.match["name"], status, cache, time.perf_counter() - started)

    async def _infer_unknown(self, request: Request, started: float) -> Response:
        try:
            info = await self.index.lookup(check_name(request.match["name"]))
            if info is None:
                raise NotFound(f"unknown model '{request.match['name']}'")
            outcome = self._infer_known(request, info, started)
        except ProtocolError as exc:
            self._done(request, exc.status, "miss", started)
            raise
        return outcome if isinstance(outcome, Response) else await outcome

    def _hit(self, request: Request, hit: CachedAnswer, request_id: str | None, started: float) -> Response:
        self._done(request, 200, "hit", started)
        return Response(200, splice_id(hit.body, request_id), None, None, hit.hit_headers)

    def _infer_known(self, request: Request, info: ModelInfo, started: float) -> Outcome:
        """Everything that can be decided without waiting; a hit is answered here."""
        version = resolve_version(info, request.match.get("version"))
        check_json_request(request.headers)
        body = request.body
        memo = info.cacheable and info.deterministic and self.key_memo.eligible(body)
        if memo and "cache-control" not in request.headers:
            # A payload seen before: its key is known, no JSON work at all.
            known = self.key_memo.get(info.name, version, body)
            if known is not None:
                hit = self.cache.get_local(known)
                if hit is not None:
                    self.metrics.hit("local")
                    return self._hit(request, hit, None, started)
        obj = loads_object(body)
        request_id = obj.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise BadRequest("'id' must be a string")
        lookup, store = cache_flags(request.headers.get("cache-control"))
        key = None
        if info.cacheable and info.deterministic and (lookup or store):
            key = cache_key(info.name, version, canonical_request(obj))
            if memo:
                self.key_memo.put(info.name, version, body, key)
            if lookup:
                hit = self.cache.get_local(key)
                if hit is not None:
                    self.metrics.hit("local")
                    return self._hit(request, hit, request_id, started)
                if self.cache.remote is not None:
                    return self._remote_then_forward(request, info.name, version, key, request_id, store, started)
                self.metrics.cache_misses.value += 1
        return self._forward(request, info.name, version, key, request_id, lookup, store, started)

    async def _remote_then_forward(
        self, request: Request, model: str, version: str, key: str, request_id: str | None, store: bool, started: float
    ) -> Response:
        hit = await self.cache.get_remote(key)
        if hit is not None:
            self.metrics.hit("redis")
            return self._hit(request, hit, request_id, started)
        self.metrics.cache_misses.value += 1
        return await self._forward(request, model, version, key, request_id, True, store, started)

    async def _forward(
        self,
        request: Request,
        model: str,
        version: str,
        key: str | None,
        request_id: str | None,
        lookup: bool,
        store: bool,
        started: float,
    ) -> Response:
        coalesce = key is not None and lookup
        state = "miss" if coalesce else "bypass"
        path = f"/v2/models/{model}/versions/{version}/infer"
        ctype = request.headers.get("content-type", JSON)
        work = self._upstream(model, path, request.body, ctype, request_id, key if store else None, coalesce)
        try:
            if coalesce:
                result, shared = await self.flights.do(key, work)
            else:
                result, shared = await work, False
        except ProtocolError as exc:
            self._done(request, exc.status, state, started)
            raise
        resp = result.response
        body = resp.body
        if shared:
            self.metrics.coalesced.value += 1
            if result.stripped is not None and result.request_id != request_id:
                body = splice_id(result.stripped, request_id)
        self._done(request, resp.status, state, started)
        content_type = resp.headers.get("Content-Type", JSON)
        return _answer(body, resp.status, content_type, state, result.worker, resp.headers.get("X-Model-Source"))

    async def _upstream(
        self,
        model: str,
        path: str,
        body: bytes,
        ctype: str,
        request_id: str | None,
        store_key: str | None,
        shareable: bool,
    ) -> Upstream:
        resp, worker = await self.router.send(model, "POST", path, body, ctype)
        result = Upstream(resp, worker, request_id)
        # The id-free body is needed only to store the answer or to hand it to coalesced callers.
        needed = store_key is not None or shareable
        if needed and resp.status == 200 and resp.headers.get("Content-Type", "").startswith(JSON):
            try:
                result.stripped = strip_id(resp.body, request_id)
            except orjson.JSONDecodeError:
                return result  # not JSON after all: neither shared by splicing nor stored
            if store_key is not None:
                self.cache.put(store_key, CachedAnswer(result.stripped, worker))
        return result

    # everything else

    async def model_get(self, request: Request) -> Response:
        """Model metadata, readiness and config: answered by the model's owner."""
        name = request.match["name"]
        info = self.index.get(name) or await self.index.lookup(check_name(name))
        if info is None:
            raise NotFound(f"unknown model '{name}'")
        resolve_version(info, request.match.get("version"))
        resp, worker = await self.router.send(name, "GET", request.path)
        return _answer(resp.body, resp.status, resp.headers.get("Content-Type", JSON), "bypass", worker, None)

    def server_metadata(self, request: Request) -> Response:
        return json_response(ServerMetadata(SERVER_NAME, __version__, EXTENSIONS).to_json())

    def live(self, request: Request) -> Response:
        return json_response({"live": True})

    def ready(self, request: Request) -> Response:
        ok = self.index.loaded and len(self.members) > 0 and not self.draining
        return json_response({"ready": ok}, 200 if ok else 503)

    async def repository_index(self, request: Request) -> Response:
        only_ready = False
        if request.body.strip():
            flag = loads_object(request.body).get("ready", False)
            if not isinstance(flag, bool):
                raise BadRequest("'ready' must be a boolean")
            only_ready = flag
        await self.index.refresh()
        if not self.index.loaded:
            raise UpstreamUnavailable("no worker answered the repository index")
        rows: list[dict[str, Any]] = [r for r in self.index.rows if not only_ready or r["state"] == "READY"]
        return json_response(rows)

    def render_metrics(self, request: Request) -> Response:
        return Response(200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")


def resolve_version(info: ModelInfo, version: str | None) -> str:
    """The version that will serve the request: the one named, or the latest."""
    if version is None:
        return info.latest
    if version not in info.versions:
        check_version(version)
        raise NotFound(f"unknown version '{version}' of model '{info.name}'")
    return version
