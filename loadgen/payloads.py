"""Request bodies: random tensors shaped by each model's metadata, made cheap.

Per model, one batch of random input data is drawn once and turned into a
protocol template; each request then draws a few fresh values for the start of
the first input (enough random bits that two requests never collide) and
splices them in. With probability ``repeat`` a request instead re-renders the
values of one sent before for the same model, byte-identical, so the cache can
answer it.

Values: floats uniform in [0, 1); integers in [0, 256) (in range for every
integer type, and valid token ids for any vocabulary of 256 or more);
booleans fair coins; BYTES short ASCII strings.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from loadgen.clients.base import EncodedRequest, RequestTemplate
from loadgen.popularity import ModelPicker
from loadgen.target import ModelSpec
from protocol.datatypes import NUMPY_DTYPES
from protocol.types import InferRequest, Tensor, TensorSpec

INT_HIGH = 256
UNIQUE_BITS = 64  # random bits per request: any two of a million requests collide with odds ~3e-8
HISTORY = 1024  # past requests per model that a repeat can pick from
VALUE_BLOCK = 1 << 14  # fresh values drawn from numpy this many at a time

TemplateFactory = Callable[[str, InferRequest, int], RequestTemplate]


def _bits_per_value(datatype: str) -> float:
    if datatype == "BOOL":
        return 1.0
    if datatype == "BYTES":
        return 48.0
    if NUMPY_DTYPES[datatype].kind == "f":
        return 10.0 if datatype == "FP16" else 23.0
    return math.log2(INT_HIGH)


def varied_count(datatype: str, elements: int) -> int:
    """How many values to redraw per request for ~``UNIQUE_BITS`` random bits."""
    return max(1, min(elements, math.ceil(UNIQUE_BITS / _bits_per_value(datatype))))


def row_bytes(spec: ModelSpec) -> int:
    """Bytes of tensor data in one batch row (BYTES counted as 8 per string)."""
    total = 0
    for tensor in spec.inputs:
        count = math.prod(1 if d < 0 else d for d in _row_shape(spec, tensor))
        itemsize = 8 if tensor.datatype == "BYTES" else NUMPY_DTYPES[tensor.datatype].itemsize
        total += count * itemsize
    return total


def _batched(spec: ModelSpec, tensor: TensorSpec) -> bool:
    return spec.max_batch_size > 0 and bool(tensor.shape) and tensor.shape[0] == -1


def _row_shape(spec: ModelSpec, tensor: TensorSpec) -> tuple[int, ...]:
    return tensor.shape[1:] if _batched(spec, tensor) else tensor.shape


def batch_rows(spec: ModelSpec, payload_size: int) -> int:
    """Rows that bring the tensor data closest to ``payload_size`` bytes,
    within 1..max_batch_size (1 for an unbatched model or size 0)."""
    if spec.max_batch_size <= 0 or payload_size <= 0:
        return 1
    return max(1, min(spec.max_batch_size, round(payload_size / max(1, row_bytes(spec)))))


def concrete_shape(spec: ModelSpec, tensor: TensorSpec, rows: int) -> tuple[int, ...]:
    """The declared shape with the batch dimension set to ``rows`` and any
    other variable dimension to 1."""
    shape = tuple(1 if d < 0 else d for d in tensor.shape)
    return (rows, *shape[1:]) if _batched(spec, tensor) else shape


def random_values(datatype: str, count: int, rng: np.random.Generator) -> np.ndarray:
    if datatype == "BYTES":
        letters = rng.integers(97, 123, size=(count, 8), dtype=np.uint8)
        out = np.empty(count, dtype=object)
        out[:] = [bytes(row) for row in letters]
        return out
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BOOL":
        return rng.integers(0, 2, size=count).astype(dtype)
    if dtype.kind == "f":
        return rng.random(count, dtype=np.float64).astype(dtype)
    return rng.integers(0, INT_HIGH, size=count).astype(dtype)


def random_request(spec: ModelSpec, rows: int, rng: np.random.Generator) -> InferRequest:
    tensors = []
    for tensor in spec.inputs:
        shape = concrete_shape(spec, tensor, rows)
        data = random_values(tensor.datatype, math.prod(shape), rng).reshape(shape)
        tensors.append(Tensor(tensor.name, tensor.datatype, shape, data))
    return InferRequest(inputs=tensors)


class ValueStream:
    """Fresh values of one datatype, drawn from numpy in blocks (one numpy call
    per block, not per request)."""

    def __init__(self, datatype: str, rng: np.random.Generator) -> None:
        self.datatype = datatype
        self._rng = rng
        self._block = random_values(datatype, 0, rng)
        self._at = 0

    def take(self, count: int) -> np.ndarray:
        if self._at + count > len(self._block):
            self._block = random_values(self.datatype, max(VALUE_BLOCK, count), self._rng)
            self._at = 0
        values = self._block[self._at : self._at + count].copy()
        self._at += count
        return values


class ModelPayloads:
    """One model's template, its fresh-value stream and its recent history."""

    def __init__(self, spec: ModelSpec, template: RequestTemplate, rng: np.random.Generator) -> None:
        self.spec = spec
        self.template = template
        self.stream = ValueStream(spec.inputs[0].datatype, rng)
        self.history: deque[np.ndarray] = deque(maxlen=HISTORY)

    def fresh(self) -> EncodedRequest:
        values = self.stream.take(self.template.varied)
        self.history.append(values)
        return self.template.render(values)

    def repeat(self, choice: random.Random) -> EncodedRequest:
        return self.template.render(self.history[choice.randrange(len(self.history))])


class PayloadSource:
    """The next request: a model by popularity, then a fresh or repeated body."""

    def __init__(
        self,
        specs: Sequence[ModelSpec],
        picker: ModelPicker,
        make_template: TemplateFactory,
        payload_size: int,
        repeat: float,
        seed: int,
    ) -> None:
        self.picker = picker
        self.repeat = repeat
        self._rng = random.Random(f"repeats-{seed}")
        data_rng = np.random.default_rng([seed, 2])
        self.models: list[ModelPayloads] = []
        for spec in specs:
            rows = batch_rows(spec, payload_size)
            request = random_request(spec, rows, data_rng)
            first = request.inputs[0]
            template = make_template(spec.name, request, varied_count(first.datatype, first.data.size))
            self.models.append(ModelPayloads(spec, template, data_rng))
        self.repeats = 0

    def next(self) -> EncodedRequest:
        model = self.models[self.picker.pick()]
        if self.repeat > 0 and model.history and self._rng.random() < self.repeat:
            self.repeats += 1
            return model.repeat(self._rng)
        return model.fresh()
