"""REST plumbing both servers share: JSON answers and the V2 error body.

One middleware renders every ``ProtocolError`` (and aiohttp's own 4xx/5xx,
such as 405 or 413 for a body over the limit) as ``{"error": "..."}`` with its
status, adds ``Retry-After`` to 429/503, and turns anything unexpected into a
plain 500 without a stack trace or internal names.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from protocol.errors import ProtocolError
from protocol.json_codec import error_body

log = logging.getLogger(__name__)

JSON = "application/json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(obj: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type=JSON)


def error_response(status: int, message: str) -> web.Response:
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return web.Response(body=error_body(message), status=status, content_type=JSON, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProtocolError as exc:
        return error_response(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal error")
