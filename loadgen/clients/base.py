"""The seam between the load generator and a wire protocol.

One class per protocol implements ``InferClient``: it turns a model's input
tensors into a ``RequestTemplate`` once (so a request costs a splice, not an
encoding), sends ``EncodedRequest``s, and reads back a ``Reply`` (status and
the affinity headers). The engine never sees the protocol.

Failures that produce no status are raised as one of::

    SendError              (kind: what the report counts it under)
     ├── RequestTimedOut   "timeout"
     ├── ConnectionFailed  "connection"  refused, reset, closed mid-answer
     └── ProtocolFailure   "protocol"    an answer the client could not read
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from protocol.types import InferRequest


@dataclass(frozen=True, slots=True)
class EncodedRequest:
    """One request ready for the wire; ``path`` is for HTTP protocols."""

    model: str
    path: str
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Reply:
    """What the report needs from an answer: its status (HTTP, or the gRPC
    code mapped to one) and the cluster's headers, None where absent."""

    status: int
    cache: str | None = None
    served_by: str | None = None
    model_source: str | None = None


class SendError(Exception):
    kind: ClassVar[str] = "other"


class RequestTimedOut(SendError):
    kind = "timeout"


class ConnectionFailed(SendError):
    kind = "connection"


class ProtocolFailure(SendError):
    kind = "protocol"


class ProtocolNotAvailable(ValueError):
    """A protocol the generator knows by name but cannot speak yet."""


class RequestTemplate(Protocol):
    """A model's request with its varying part left open: ``render(values)``
    gives the request whose first input starts with ``values`` (``varied`` of
    them) followed by the template's own data."""

    @property
    def varied(self) -> int: ...

    def render(self, values: np.ndarray) -> EncodedRequest: ...


class InferClient(abc.ABC):
    """One protocol's client: a template per model, then sends.

    ``template`` is pure (no connection needed); ``start`` opens the transport
    inside the running event loop and ``close`` releases it.
    """

    protocol: ClassVar[str]

    @abc.abstractmethod
    def template(self, model: str, request: InferRequest, varied: int) -> RequestTemplate: ...

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def send(self, request: EncodedRequest) -> Reply: ...

    @abc.abstractmethod
    async def close(self) -> None: ...
