"""Balancer-internal errors. Errors a request carries back to the client live in
``protocol.errors`` (one hierarchy, one status table for REST and gRPC)."""

from __future__ import annotations


class UpstreamError(Exception):
    """A try that failed before any response byte: connect error, reset or timeout.

    Internal to the balancer: the router retries it on the next candidate."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind
