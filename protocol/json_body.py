"""JSON bodies without tensors: parse an object, the V2 error body, and the
request-id surgery the cache needs. No numpy here, so the balancer, which
never decodes a tensor, does not import it."""

from __future__ import annotations

from typing import Any

import orjson

from protocol.errors import BadRequest


def loads_object(body: bytes, what: str = "request body") -> dict[str, Any]:
    """Parse a JSON object, or raise BadRequest naming what was malformed."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON in {what}: {exc.args[0]}") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return obj


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _id_prefix(request_id: str) -> bytes:
    return b'{"id":' + orjson.dumps(request_id) + b","


def strip_id(body: bytes, request_id: str | None) -> bytes:
    """The response body without its ``id`` member.

    Our worker writes ``id`` first, so this is a slice; any other server's body
    is parsed and re-serialised (orjson keeps member order and float text)."""
    if request_id is None:
        return body
    prefix = _id_prefix(request_id)
    if body.startswith(prefix):
        return b"{" + body[len(prefix) :]
    obj = orjson.loads(body)
    obj.pop("id", None)
    return orjson.dumps(obj)


def splice_id(body: bytes, request_id: str | None) -> bytes:
    """Put a request's ``id`` first into an id-free response body."""
    if request_id is None:
        return body
    if body == b"{}":
        return b'{"id":' + orjson.dumps(request_id) + b"}"
    return _id_prefix(request_id) + body[1:]
