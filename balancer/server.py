"""The balancer's V2 REST front: the request path of DESIGN.md, steps 1-7.

1 model (+ version) from the path, checked against the cached index
2 cache key from model, resolved version and canonical inputs (not the id)
3 in-process LRU, then Redis: a hit answers at once (X-Cache: hit)
4 a miss joins an identical request in flight, or goes upstream
5-6 the router picks a worker by policy and retries on the next candidate
7 a 2xx answer of a deterministic, cacheable model is stored
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from balancer.config import BalancerConfig
from balancer.errors import UpstreamUnavailable
from balancer.index import ModelIndex
from balancer.members import Members
from balancer.metrics import BalancerMetrics
from balancer.router import Router
from balancer.transport import Transport, UpstreamResponse
from cache.entry import CachedAnswer
from cache.keys import cache_key, canonical_request
from cache.response_cache import ResponseCache
from common.singleflight import SingleFlight
from protocol.errors import BadRequest, NotFound, ProtocolError
from protocol.json_codec import loads_object, splice_id, strip_id
from protocol.names import check_name, check_version
from protocol.rest import JSON, json_response
from protocol.types import ServerMetadata

log = logging.getLogger(__name__)

SERVER_NAME = "affinity-serve"
EXTENSIONS = ("model_repository",)


@dataclass(slots=True)
class Upstream:
    """What one upstream call produced, shared by coalesced callers."""

    response: UpstreamResponse
    worker: str
    request_id: str | None
    stripped: bytes | None = None  # id-free body, when the answer was 2xx JSON


@dataclass
class BalancerState:
    config: BalancerConfig
    members: Members
    index: ModelIndex
    router: Router
    cache: ResponseCache
    metrics: BalancerMetrics
    transport: Transport
    flights: SingleFlight[Upstream] = field(default_factory=SingleFlight)
    draining: bool = False
    version: str = "0"
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


STATE = web.AppKey("state", BalancerState)


async def _model(state: BalancerState, request: web.Request) -> tuple[str, str]:
    """The model name and the version that will serve the request (404 if unknown)."""
    name = request.match_info["name"]
    info = state.index.get(name)
    if info is None:
        info = await state.index.lookup(check_name(name))
        if info is None:
            raise NotFound(f"unknown model '{name}'")
    version = request.match_info.get("version")
    if version is None:
        return name, info.latest
    if version not in info.versions:
        check_version(version)
        raise NotFound(f"unknown version '{version}' of model '{name}'")
    return name, version


def _cache_flags(request: web.Request) -> tuple[bool, bool]:
    """(lookup, store) as the request's Cache-Control allows."""
    header = request.headers.get("Cache-Control")
    if header is None:
        return True, True
    directives = {d.strip().lower() for d in header.split(",")}
    return "no-cache" not in directives, "no-store" not in directives


def _answer(body: bytes, status: int, content_type: str, cache: str, worker: str, source: str | None) -> web.Response:
    headers = {"Content-Type": content_type, "X-Cache": cache, "X-Served-By": worker}
    if source is not None:
        headers["X-Model-Source"] = source
    return web.Response(body=body, status=status, headers=headers)


async def infer(request: web.Request) -> web.Response:
    started = time.perf_counter()
    state = request.app[STATE]
    name = request.match_info["name"]
    code, cache_state = 500, "miss"
    try:
        name, version = await _model(state, request)
        body = await request.read()
        obj = loads_object(body)
        request_id = obj.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise BadRequest("'id' must be a string")
        info = state.index.models[name]
        lookup, store = _cache_flags(request)
        key = None
        if info.cacheable and info.deterministic and (lookup or store):
            key = cache_key(name, version, canonical_request(obj))
            if lookup:
                hit = state.cache.get_local(key)
                layer = "local"
                if hit is None and state.cache.remote is not None:
                    hit = await state.cache.get_remote(key)
                    layer = "redis"
                if hit is not None:
                    state.metrics.hit(layer)
                    code, cache_state = 200, "hit"
                    return _answer(splice_id(hit.body, request_id), 200, hit.content_type, "hit", hit.served_by, None)
                state.metrics.cache_misses.inc()
        if not lookup or key is None:
            cache_state = "bypass"
        path = f"/v2/models/{name}/versions/{version}/infer"
        ctype = request.headers.get("Content-Type", JSON)
        work = _upstream(state, name, path, body, ctype, request_id, key if store else None)
        if key is not None and lookup:
            result, shared = await state.flights.do(key, work)
        else:
            result, shared = await work, False
        resp = result.response
        out = resp.body
        if shared:
            state.metrics.coalesced.inc()
            if result.stripped is not None and result.request_id != request_id:
                out = splice_id(result.stripped, request_id)
        code = resp.status
        content_type = resp.headers.get("Content-Type", JSON)
        return _answer(out, resp.status, content_type, cache_state, result.worker, resp.headers.get("X-Model-Source"))
    except ProtocolError as exc:
        code = exc.status
        raise
    except web.HTTPException as exc:
        code = exc.status
        raise
    finally:
        state.metrics.observe(name, code, cache_state, time.perf_counter() - started)


async def _upstream(
    state: BalancerState, model: str, path: str, body: bytes, ctype: str, request_id: str | None, store_key: str | None
) -> Upstream:
    resp, worker = await state.router.send(model, "POST", path, body, ctype)
    result = Upstream(resp, worker, request_id)
    if resp.status == 200 and resp.headers.get("Content-Type", "").startswith(JSON):
        try:
            result.stripped = strip_id(resp.body, request_id)
        except orjson.JSONDecodeError:
            return result  # not JSON after all: neither shared by splicing nor stored
        if store_key is not None:
            state.cache.put(store_key, CachedAnswer(result.stripped, worker))
    return result


async def proxy_model_get(request: web.Request) -> web.Response:
    """Model metadata, readiness and config: answered by the model's owner."""
    state = request.app[STATE]
    name, _ = await _model(state, request)
    resp, worker = await state.router.send(name, "GET", request.path)
    return _answer(resp.body, resp.status, resp.headers.get("Content-Type", JSON), "bypass", worker, None)


async def server_metadata(request: web.Request) -> web.Response:
    return json_response(ServerMetadata(SERVER_NAME, request.app[STATE].version, EXTENSIONS).to_json())


async def live(request: web.Request) -> web.Response:
    return json_response({"live": True})


async def ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ok = state.index.loaded and len(state.members) > 0 and not state.draining
    return json_response({"ready": ok}, 200 if ok else 503)


async def repository_index(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await request.read()
    only_ready = False
    if body.strip():
        flag = loads_object(body).get("ready", False)
        if not isinstance(flag, bool):
            raise BadRequest("'ready' must be a boolean")
        only_ready = flag
    await state.index.refresh()
    if not state.index.loaded:
        raise UpstreamUnavailable("no worker answered the repository index")
    rows: list[dict[str, Any]] = [r for r in state.index.rows if not only_ready or r["state"] == "READY"]
    return json_response(rows)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[STATE].metrics.render(), content_type="text/plain", charset="utf-8")


def add_routes(app: web.Application) -> None:
    v = "/versions/{version}"
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    for prefix in ("/v2/models/{name}", "/v2/models/{name}" + v):
        app.router.add_post(prefix + "/infer", infer)
        for suffix in ("", "/ready", "/config"):
            app.router.add_get(prefix + suffix, proxy_model_get)
    app.router.add_post("/v2/repository/index", repository_index)
    app.router.add_get("/metrics", metrics)
