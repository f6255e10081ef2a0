"""Open Inference Protocol (KServe V2) request, response and metadata types.

These are the typed shapes that cross every boundary; codecs turn them into
bytes and back. Tensor data is a numpy array already in the tensor's shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the balancer imports these types without numpy
    import numpy as np

Parameters = dict[str, Any]


@dataclass(slots=True)
class Tensor:
    """A named tensor: V2 datatype name, shape, and data shaped accordingly."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Parameters | None = None


@dataclass(slots=True, frozen=True)
class RequestedOutput:
    name: str
    parameters: Parameters | None = None


@dataclass(slots=True)
class InferRequest:
    inputs: list[Tensor]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None
    parameters: Parameters | None = None


@dataclass(slots=True)
class InferResponse:
    model_name: str
    outputs: list[Tensor]
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None


@dataclass(slots=True, frozen=True)
class TensorSpec:
    """A model's declared input or output: -1 marks a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(slots=True, frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": list(self.versions),
            "platform": self.platform,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }


@dataclass(slots=True, frozen=True)
class IndexEntry:
    """One row of the model repository index, as Triton serves it plus our fields.

    ``deterministic`` and ``cacheable`` tell the balancer whether answers may be
    cached, ``cache_ttl`` for how long (None: the balancer's default), ``sha256``
    names the version's weights (cache keys bind it); ``state`` is READY,
    LOADING or UNAVAILABLE; ``tier`` is where the version is now on the worker
    that answers: gpu or cpu (resident), disk or remote (waiting to be paged in);
    ``min_replicas`` and ``max_replicas`` bound how many workers the balancer
    spreads a hot model over; ``size`` is the bytes of its weights.
    """

    name: str
    version: str
    state: str
    reason: str = ""
    deterministic: bool = True
    cacheable: bool = True
    resident: bool = False
    sha256: str = ""
    cache_ttl: float | None = None
    tier: str = ""
    min_replicas: int = 1  # hot-model replicas the balancer keeps at least
    max_replicas: int | None = None  # and at most (None: the balancer's default)
    size: int = 0  # bytes of the version's weights (0: not known); the balancer's placement reads it

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "state": self.state,
            "reason": self.reason,
            "deterministic": self.deterministic,
            "cacheable": self.cacheable,
            "resident": self.resident,
            "sha256": self.sha256,
            "cache_ttl": self.cache_ttl,
            "tier": self.tier,
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "size": self.size,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> IndexEntry:
        return cls(
            name=str(raw["name"]),
            version=str(raw.get("version", "")),
            state=str(raw.get("state", "")),
            reason=str(raw.get("reason", "")),
            deterministic=bool(raw.get("deterministic", True)),
            cacheable=bool(raw.get("cacheable", True)),
            resident=bool(raw.get("resident", False)),
            sha256=str(raw.get("sha256", "")),
            cache_ttl=float(raw["cache_ttl"]) if raw.get("cache_ttl") is not None else None,
            tier=str(raw.get("tier", "")),
            min_replicas=int(raw.get("min_replicas") or 1),
            max_replicas=int(raw["max_replicas"]) if raw.get("max_replicas") is not None else None,
            size=_size(raw.get("size")),
        )


def _size(raw: Any) -> int:
    """A row's weight size; 0 (not known) unless a positive integer: a bad size must
    not cost the balancer the rest of a worker's index."""
    return raw if type(raw) is int and raw > 0 else 0


@dataclass(slots=True, frozen=True)
class ServerMetadata:
    """The V2 server metadata, plus the worker's stable id (``worker_id``), from
    which a balancer learns who answers at an address (its ring uses ids, never
    URLs), its ``grpc_port`` (the balancer forwards gRPC calls there) and its
    ``capacity`` (bytes of memory budget), which weighs its place on the ring."""

    name: str
    version: str
    extensions: tuple[str, ...] = field(default_factory=tuple)
    worker_id: str | None = None
    grpc_port: int | None = None  # where the worker serves gRPC, when it does
    capacity: int | None = None  # bytes: the worker's weight on a balancer's ring

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "version": self.version, "extensions": list(self.extensions)}
        if self.worker_id is not None:
            out["worker_id"] = self.worker_id
        if self.grpc_port is not None:
            out["grpc_port"] = self.grpc_port
        if self.capacity is not None:
            out["capacity"] = self.capacity
        return out


@dataclass(slots=True, frozen=True)
class RawTensor:
    """A tensor as the wire carries it, without numpy: its elements as raw
    little-endian bytes, row-major (BYTES: each a 4-byte length, then the bytes;
    ``protocol.packing``). The binary extension and gRPC's ``raw_*_contents``
    hold exactly this, so the balancer keys and converts tensors with it."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes
    parameters: Parameters | None = None


@dataclass(slots=True, frozen=True)
class RawResponse:
    """An inference answer with raw tensors and no ``id``: the one form every
    encoding (JSON, binary, protobuf) is rendered from."""

    model_name: str
    outputs: tuple[RawTensor, ...]
    model_version: str | None = None
    parameters: Parameters | None = None
