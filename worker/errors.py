"""Worker-internal errors. Errors a request carries back to the client live in
``protocol.errors`` (one hierarchy, one status table for REST and gRPC)."""

from __future__ import annotations


class InvalidModelConfig(ValueError):
    """A repository entry's config.json is unusable (not a request error: the
    version is listed as UNAVAILABLE with this reason)."""
