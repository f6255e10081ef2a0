"""A model version's ``config.json``: architecture, arguments and interface.

    {
      "architecture": "mlp",              # a name in worker.architectures
      "args": {...},                      # the architecture's constructor arguments
      "inputs":  [{"name": "input",  "datatype": "FP32", "shape": [-1, 64]}],
      "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
      "max_batch_size": 64,               # 0: no batch dimension
      "deterministic": true,              # same input, same answer: cacheable
      "cache": true,                      # per-model opt-out of the response cache
      "cache_ttl": 600,                   # seconds an answer stays cached (default: the balancer's)
      "warmup": true,                     # run one synthetic inference after loading
      "pinned": false,                    # once loaded, never evicted from memory
      "replicas": {"min": 1, "max": 4}    # how many workers a hot model may spread over (balancer)
    }

With ``max_batch_size > 0`` the first dimension of every input and output is the
batch dimension and is written as -1. Parsing needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from protocol.datatypes import DATATYPES
from protocol.types import TensorSpec
from worker.errors import InvalidModelConfig


@dataclass(slots=True, frozen=True)
class ModelConfig:
    architecture: str
    args: dict[str, Any]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0
    deterministic: bool = True
    cache: bool = True
    cache_ttl: float | None = None
    warmup: bool = True
    pinned: bool = False
    min_replicas: int = 1
    max_replicas: int | None = None  # None: the balancer's default

    def to_json(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "args": self.args,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "max_batch_size": self.max_batch_size,
            "deterministic": self.deterministic,
            "cache": self.cache,
            **({"cache_ttl": self.cache_ttl} if self.cache_ttl is not None else {}),
            "warmup": self.warmup,
            "pinned": self.pinned,
            **({"replicas": self._replicas_json()} if self.min_replicas > 1 or self.max_replicas is not None else {}),
        }

    def _replicas_json(self) -> dict[str, int]:
        return {"min": self.min_replicas, **({"max": self.max_replicas} if self.max_replicas is not None else {})}

    @classmethod
    def from_json(cls, raw: Any) -> ModelConfig:
        if not isinstance(raw, dict):
            raise InvalidModelConfig("config.json must hold an object")
        try:
            min_replicas, max_replicas = _replicas(raw.get("replicas"))
            config = cls(
                architecture=str(raw["architecture"]),
                args=dict(raw.get("args", {})),
                inputs=tuple(_spec(t) for t in raw["inputs"]),
                outputs=tuple(_spec(t) for t in raw["outputs"]),
                max_batch_size=int(raw.get("max_batch_size", 0)),
                deterministic=bool(raw.get("deterministic", True)),
                cache=bool(raw.get("cache", True)),
                cache_ttl=float(raw["cache_ttl"]) if raw.get("cache_ttl") is not None else None,
                warmup=bool(raw.get("warmup", True)),
                pinned=bool(raw.get("pinned", False)),
                min_replicas=min_replicas,
                max_replicas=max_replicas,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidModelConfig(f"config.json is missing or has a bad field: {exc}") from None
        if not config.inputs or not config.outputs:
            raise InvalidModelConfig("config.json needs at least one input and one output")
        if config.cache_ttl is not None and not config.cache_ttl > 0:
            raise InvalidModelConfig("cache_ttl must be a positive number of seconds")
        if config.max_batch_size < 0:
            raise InvalidModelConfig("max_batch_size cannot be negative")
        if config.max_batch_size > 0:
            for spec in config.inputs + config.outputs:
                if not spec.shape or spec.shape[0] != -1:
                    raise InvalidModelConfig(f"'{spec.name}': with batching, the first dimension must be -1")
        return config

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelConfig:
        try:
            return cls.from_json(orjson.loads(data))
        except orjson.JSONDecodeError:
            raise InvalidModelConfig("config.json is not valid JSON") from None


def _replicas(raw: Any) -> tuple[int, int | None]:
    """``"replicas": {"min": 1, "max": 4}`` (or a plain number: the maximum)."""
    if raw is None:
        return 1, None
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = {"max": raw}
    if not isinstance(raw, dict):
        raise ValueError("replicas must be an object {min, max} or a number")
    low = int(raw.get("min", 1))
    high = int(raw["max"]) if raw.get("max") is not None else None
    if low < 1 or (high is not None and high < low):
        raise ValueError("replicas: 1 <= min <= max")
    return low, high


def _spec(raw: Any) -> TensorSpec:
    name, datatype, shape = raw["name"], raw["datatype"], raw["shape"]
    if not isinstance(name, str) or datatype not in DATATYPES:
        raise ValueError(f"bad tensor spec {name!r}")
    dims = tuple(int(d) for d in shape)
    if any(d < -1 or d == 0 for d in dims):
        raise ValueError(f"'{name}': dimensions are positive, or -1 for variable")
    return TensorSpec(name, datatype, dims)
