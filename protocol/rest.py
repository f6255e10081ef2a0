"""REST plumbing both servers share: JSON answers and the V2 error body.

``render_error`` turns every error into ``{"error": "..."}`` with its status:
a ``ProtocolError`` or an HTTP-level refusal (unknown route, 405, 413 for a body
over the limit) keeps its own; 429/503 carry ``Retry-After``; anything
unexpected is logged and answered as a plain 500, never a stack trace.
"""

from __future__ import annotations

import logging

import orjson

from common.http_server import HttpError, Response
from protocol.errors import ProtocolError
from protocol.json_body import error_body

log = logging.getLogger(__name__)

JSON = "application/json"


def json_response(obj: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, orjson.dumps(obj), JSON, headers)


def error_response(status: int, message: str) -> Response:
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return Response(status, error_body(message), JSON, headers)


def render_error(exc: BaseException) -> Response:
    if isinstance(exc, ProtocolError | HttpError):
        return error_response(exc.status, exc.message)
    log.error("unhandled error", exc_info=exc)
    return error_response(500, "internal error")
