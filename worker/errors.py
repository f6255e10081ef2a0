"""Worker errors, each with the HTTP status it answers with.

ProtocolError (protocol.errors)
├── BadRequest 400, NotFound 404, PayloadTooLarge 413   (protocol.errors)
├── ModelLoadFailed        500: weights or config could not be loaded
├── ModelTooLarge          507: the model cannot fit in memory (or in the disk cache)
├── MemoryBusy             503: no room now, everything evictable is in use (retry)
└── NotReady               503: the worker is starting or draining
"""

from __future__ import annotations

from protocol.errors import ProtocolError


class ModelLoadFailed(ProtocolError):
    status = 500


class ModelExecutionFailed(ProtocolError):
    status = 500


class ModelTooLarge(ProtocolError):
    status = 507


class MemoryBusy(ProtocolError):
    """The model fits, but what could make room for it is in use right now (retry)."""

    status = 503


class NotReady(ProtocolError):
    status = 503


class InvalidModelConfig(ValueError):
    """A repository entry's config.json is unusable (not a request error)."""
