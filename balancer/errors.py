"""Balancer errors, each with the HTTP status it answers with.

ProtocolError (protocol.errors)
├── BadRequest 400, NotFound 404, PayloadTooLarge 413   (protocol.errors)
├── NoHealthyWorker        503: no worker can take the model (Retry-After)
└── UpstreamUnavailable    502: every candidate failed before answering
"""

from __future__ import annotations

from protocol.errors import ProtocolError


class NoHealthyWorker(ProtocolError):
    status = 503


class UpstreamUnavailable(ProtocolError):
    status = 502


class UpstreamError(Exception):
    """A try that failed before any response byte: connect error, reset or timeout.

    Internal to the balancer: the router retries it on the next candidate."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind
