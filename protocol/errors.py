"""Errors a request can carry back to the client, each with its HTTP status.

    ProtocolError              (base; carries ``status``)
    ├── BadRequest             400: malformed body, wrong shape, datatype or name
    ├── NotFound               404: unknown model, version or route
    └── PayloadTooLarge        413: body or tensor over a configured limit

Parts define their own subclasses (overload, unavailable, too big for memory);
one middleware per server renders any of them as the V2 error body
``{"error": "..."}``. Messages never carry paths, handles or stack traces.
"""

from __future__ import annotations


class ProtocolError(Exception):
    status: int = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(ProtocolError):
    status = 400


class NotFound(ProtocolError):
    status = 404


class PayloadTooLarge(ProtocolError):
    status = 413
