"""A model version's ``config.json``: format, architecture, arguments and interface.

    {
      "format": "safetensors",            # or "onnx" (default: safetensors)
      "architecture": "mlp",              # a name in worker.architectures, or
                                          # "python:package.module:factory" (code the
                                          # worker allows); none for onnx
      "args": {...},                      # the architecture's constructor arguments
      "inputs":  [{"name": "input",  "datatype": "FP32", "shape": [-1, 64]}],
      "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
      "max_batch_size": 64,               # 0: no batch dimension
      "max_queue_delay_us": 500,          # how long a batch may wait for more (default: the worker's)
      "deterministic": true,              # same input, same answer: cacheable
      "cache": true,                      # per-model opt-out of the response cache
      "cache_ttl": 600,                   # seconds an answer stays cached (default: the balancer's)
      "warmup": true,                     # run one synthetic inference after loading
      "pinned": false,                    # once loaded, never evicted from memory
      "quantize": "int8",                 # opt-in: Linear layers' weights in INT8 (worker.quantize)
      "replicas": {"min": 1, "max": 4}    # how many workers a hot model may spread over (balancer)
    }

With ``max_batch_size > 0`` the first dimension of every input and output is the
batch dimension and is written as -1. The interface is the config's to declare,
for every format: names, datatypes and shapes are checked against the model by
a synthetic forward when it loads (``worker.interface``). Each format has one
weights file in the version's directory (``WEIGHTS_FILES``). Parsing needs no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from protocol.datatypes import DATATYPES
from protocol.types import TensorSpec
from worker.errors import InvalidModelConfig

QUANTIZE_MODES = ("int8",)  # what worker.quantize applies at load (named here: parsing needs no torch)
# Each format's one weights file in a version's directory.
WEIGHTS_FILES = {"safetensors": "model.safetensors", "onnx": "model.onnx"}
CODE_PREFIX = "python:"
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_CODE = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/\-]{0,127}")  # a tensor name, as graphs spell them


@dataclass(slots=True, frozen=True)
class ModelConfig:
    architecture: str
    args: dict[str, Any]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0
    max_queue_delay: float | None = None  # seconds a batch may be held open (None: the worker's --max-queue-delay)
    deterministic: bool = True
    cache: bool = True
    cache_ttl: float | None = None
    warmup: bool = True
    pinned: bool = False
    min_replicas: int = 1
    max_replicas: int | None = None  # None: the balancer's default
    format: str = "safetensors"
    quantize: str | None = None  # "int8": the owner accepts INT8 weights' answers (worker.quantize)

    @property
    def weights_file(self) -> str:
        return WEIGHTS_FILES[self.format]

    @property
    def code(self) -> str | None:
        """``package.module:factory`` when the architecture is user code, else None."""
        return self.architecture.removeprefix(CODE_PREFIX) if self.architecture.startswith(CODE_PREFIX) else None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            **({"architecture": self.architecture} if self.architecture else {}),
            "args": self.args,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "max_batch_size": self.max_batch_size,
            **({"max_queue_delay_us": self.max_queue_delay * 1e6} if self.max_queue_delay is not None else {}),
            "deterministic": self.deterministic,
            "cache": self.cache,
            **({"cache_ttl": self.cache_ttl} if self.cache_ttl is not None else {}),
            "warmup": self.warmup,
            "pinned": self.pinned,
            **({"replicas": self._replicas_json()} if self.min_replicas > 1 or self.max_replicas is not None else {}),
            **({"quantize": self.quantize} if self.quantize is not None else {}),
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
                format=str(raw.get("format", "safetensors")),
                architecture=str(raw.get("architecture", "")),
                args=dict(raw.get("args", {})),
                inputs=tuple(_spec(t) for t in raw["inputs"]),
                outputs=tuple(_spec(t) for t in raw["outputs"]),
                max_batch_size=int(raw.get("max_batch_size", 0)),
                max_queue_delay=_queue_delay(raw.get("max_queue_delay_us")),
                deterministic=bool(raw.get("deterministic", True)),
                cache=bool(raw.get("cache", True)),
                cache_ttl=float(raw["cache_ttl"]) if raw.get("cache_ttl") is not None else None,
                warmup=bool(raw.get("warmup", True)),
                pinned=bool(raw.get("pinned", False)),
                min_replicas=min_replicas,
                max_replicas=max_replicas,
                quantize=str(raw["quantize"]) if raw.get("quantize") is not None else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidModelConfig(f"config.json is missing or has a bad field: {exc}") from None
        if config.format not in WEIGHTS_FILES:
            raise InvalidModelConfig(f"unknown format '{config.format[:32]}': use {' or '.join(WEIGHTS_FILES)}")
        if config.format == "safetensors" and not config.architecture:
            raise InvalidModelConfig("a safetensors model needs an 'architecture'")
        if config.format == "onnx" and config.architecture:
            raise InvalidModelConfig("an onnx model carries its graph: it takes no 'architecture'")
        if config.code is not None and not _CODE.fullmatch(config.code):
            raise InvalidModelConfig("architecture 'python:...' must name package.module:factory")
        if not config.inputs or not config.outputs:
            raise InvalidModelConfig("config.json needs at least one input and one output")
        for group, specs in (("input", config.inputs), ("output", config.outputs)):
            names = [spec.name for spec in specs]
            if len(set(names)) != len(names):
                raise InvalidModelConfig(f"config.json names an {group} twice")
        if config.quantize is not None:
            if config.quantize not in QUANTIZE_MODES:
                raise InvalidModelConfig(f"unknown quantize '{config.quantize[:32]}': use {', '.join(QUANTIZE_MODES)}")
            if config.format != "safetensors":
                raise InvalidModelConfig("quantize applies to safetensors models (an onnx graph is quantized offline)")
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
    if not isinstance(name, str) or not _NAME.fullmatch(name) or datatype not in DATATYPES:
        raise ValueError(f"bad tensor spec {name!r}")
    dims = tuple(int(d) for d in shape)
    if any(d < -1 or d == 0 for d in dims):
        raise ValueError(f"'{name}': dimensions are positive, or -1 for variable")
    return TensorSpec(name, datatype, dims)


def _queue_delay(raw: Any) -> float | None:
    """``max_queue_delay_us`` (Triton's name and unit) as seconds."""
    if raw is None:
        return None
    delay = float(raw)
    if delay < 0:
        raise ValueError("max_queue_delay_us cannot be negative")
    return delay / 1e6
