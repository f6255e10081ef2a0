"""REST plumbing both servers share: JSON answers and the V2 error body.

``render_error`` turns every error into ``{"error": "..."}`` with its status:
a ``ProtocolError`` or an HTTP-level refusal (unknown route, 405, 413 for a body
over the limit) keeps its own; 429/503 carry ``Retry-After``; anything
unexpected is logged and answered as a plain 500, never a stack trace.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import orjson

from common.http_router import Router
from common.http_server import Handler, HttpError, Response
from protocol.errors import BadRequest, ProtocolError
from protocol.json_body import error_body

log = logging.getLogger(__name__)

JSON = "application/json"


def json_response(obj: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, orjson.dumps(obj), JSON, headers)


def error_response(status: int, message: str) -> Response:
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return Response(status, error_body(message), JSON, headers)


BINARY_HEADER = "inference-header-content-length"


def check_json_request(headers: dict[str, str]) -> None:
    """Refuse, clearly, a request in the binary tensor data extension (not served yet)."""
    if BINARY_HEADER in headers:
        raise BadRequest("the binary tensor data extension is not supported yet: send the request as JSON")


def render_error(exc: BaseException) -> Response:
    if isinstance(exc, ProtocolError | HttpError):
        return error_response(exc.status, exc.message)
    log.error("unhandled error", exc_info=exc)
    return error_response(500, "internal error")


@dataclass(frozen=True, slots=True)
class V2Handlers:
    """One handler per V2 REST route; both servers serve exactly these paths."""

    infer: Handler
    live: Handler
    ready: Handler
    server_metadata: Handler
    model_metadata: Handler
    model_ready: Handler
    model_config: Handler
    repository_index: Handler
    metrics: Handler


def v2_router(h: V2Handlers) -> Router:
    """The Open Inference Protocol's paths (plus Triton's ``/config``, the
    repository index and ``/metrics``), with and without ``/versions/{version}``;
    infer first, the hot route."""
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
    router.add("POST", "/v2/repository/index", h.repository_index)
    router.add("GET", "/metrics", h.metrics)
    return router
