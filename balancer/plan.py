"""What one inference carries through the balancer: the call as a front hands it
over, the plan built once from it, and the answer handed back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from balancer.renderings import JSON_RENDERING, Rendering
from cache.keys import KeyRequest
from common.http_message import HeaderBlock


@dataclass(slots=True)
class InferCall:
    """One inference as a front hands it over: the model and version, the body
    as it came (forwarded unchanged) and what the body is.

    encoding  json    REST, a JSON body
              binary  REST, the binary extension (``header_length`` set)
              grpc    a serialised ModelInferRequest (``message``: it parsed)
    ``timeout``: the seconds the caller's deadline leaves (gRPC, or REST's X-Request-Timeout),
    None for the balancer's default; ``tenant``: the API key's tenant, the namespace
    of the request's cache keys ("" without API keys)."""

    model: str
    version: str | None
    body: bytes
    content_type: str
    cache_control: str | None = None
    protocol: str = "rest"
    encoding: str = "json"
    header_length: int | None = None
    message: Any = None
    timeout: float | None = None
    tenant: str = ""


@dataclass(slots=True)
class RequestPlan:
    """Everything decided about a request before it waits on anything: built once,
    passed along the miss path instead of a row of arguments."""

    model: str
    version: str  # resolved: the one named, or the latest
    key: str | None  # the cache key; None when the answer is neither looked up nor stored
    request_id: str | None  # echoed on every answer, never part of the key
    lookup: bool  # look the key up, and join an identical request in flight
    store: bool  # store a cacheable answer under the key
    started: float  # perf_counter() when the request was read
    cache_ttl: float | None = None  # the model's own TTL for stored answers (None: the default)
    rendering: Rendering = JSON_RENDERING  # how the request wants its answer
    # A JSON request's object and typed content, kept for the hop to the worker in the binary
    # extension (None: the body goes as it came); packed only when the request goes upstream.
    typed: tuple[dict[str, Any], KeyRequest] | None = None

    @property
    def flight(self) -> str | None:
        """The key identical requests in flight share: one per rendering, so each
        shared answer only needs its id spliced in."""
        if self.key is None or self.rendering == JSON_RENDERING:
            return self.key
        return f"{self.key}|{self.rendering.tag}"

    @property
    def cache_state(self) -> str:
        return "miss" if self.lookup else "bypass"

    @property
    def upstream_path(self) -> str:
        return f"/v2/models/{self.model}/versions/{self.version}/infer"


@dataclass(slots=True)
class Answer:
    """What the service answers: a front renders it in its own format."""

    status: int
    body: bytes
    content_type: str | None
    cache: str  # hit, miss or bypass
    served_by: str
    headers: dict[str, str] | None = None  # X-Cache, X-Served-By, X-Model-Source, Retry-After (misses)
    hit_headers: HeaderBlock | None = None  # a hit's header block, encoded once when the entry was made
