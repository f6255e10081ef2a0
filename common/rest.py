"""REST plumbing both servers share: JSON answers, the V2 error body, the V2 route table.

``render_error`` turns every error into ``{"error": "..."}`` with its status:
a ``ProtocolError`` (protocol.errors, the one status table) or an HTTP-level
refusal (unknown route, 405, 413, 431 ...) keeps its own; 429, 502 and 503 carry
``Retry-After``; anything unexpected is logged and answered as a plain 500,
never a stack trace.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import orjson

from common.http_router import Router
from common.http_server import Handler, HttpError, Response
from protocol.errors import BadRequest, ProtocolError
from protocol.json_body import error_body, loads_object

log = logging.getLogger(__name__)

JSON = "application/json"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def json_response(obj: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, orjson.dumps(obj), JSON, headers)


def error_response(status: int, message: str, retry_after: int | None = None) -> Response:
    if retry_after is None and status in (429, 502, 503):
        retry_after = 1
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return Response(status, error_body(message), JSON, headers)


def render_error(exc: BaseException) -> Response:
    if isinstance(exc, ProtocolError):
        response = error_response(exc.status, exc.message, exc.retry_after)
        if exc.status == 401:
            response.headers = {**(response.headers or {}), "WWW-Authenticate": "Bearer"}
        return response
    if isinstance(exc, HttpError):
        response = error_response(exc.status, exc.message)
        allow = getattr(exc, "allow", None)
        if allow:
            response.headers = {**(response.headers or {}), "Allow": allow}
        return response
    log.error("unhandled error", exc_info=exc)
    return error_response(500, "internal error")


def query_flag(body: bytes, field: str) -> bool:
    """An optional boolean member of a small JSON object body (``{"ready": true}``)."""
    if not body.strip():
        return False
    flag = loads_object(body).get(field, False)
    if not isinstance(flag, bool):
        raise BadRequest(f"'{field}' must be a boolean")
    return flag


@dataclass(frozen=True, slots=True)
class V2Handlers:
    """One handler per V2 REST route; both servers serve exactly these paths
    (the repository load/unload and statistics routes where a part provides them)."""

    infer: Handler
    live: Handler
    ready: Handler
    server_metadata: Handler
    model_metadata: Handler
    model_ready: Handler
    model_config: Handler
    repository_index: Handler
    metrics: Handler
    repository_load: Handler | None = None
    repository_unload: Handler | None = None
    model_stats: Handler | None = None


def v2_router(h: V2Handlers) -> Router:
    """The Open Inference Protocol's paths (plus Triton's ``/config``, the
    repository and statistics extensions and ``/metrics``), with and without
    ``/versions/{version}``; infer first, the hot route."""
    router = Router()
    prefixes = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    for prefix in prefixes:
        router.add("POST", prefix + "/infer", h.infer)
    router.add("GET", "/v2/health/ready", h.ready)
    router.add("GET", "/v2/health/live", h.live)
    router.add("GET", "/v2", h.server_metadata)
    for prefix in prefixes:
        router.add("GET", prefix, h.model_metadata)
        router.add("GET", prefix + "/ready", h.model_ready)
        router.add("GET", prefix + "/config", h.model_config)
        if h.model_stats is not None:
            router.add("GET", prefix + "/stats", h.model_stats)
    router.add("POST", "/v2/repository/index", h.repository_index)
    if h.repository_load is not None:
        router.add("POST", "/v2/repository/models/{name}/load", h.repository_load)
    if h.repository_unload is not None:
        router.add("POST", "/v2/repository/models/{name}/unload", h.repository_unload)
    router.add("GET", "/metrics", h.metrics)
    return router
