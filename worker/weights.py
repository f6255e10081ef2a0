"""What a safetensors file holds, read from its header alone, before loading it.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
(``{"<tensor>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
"__metadata__": {..}}``), then the tensors' bytes. The memory manager charges a
model's tensor bytes to a tier before loading it, so the header must not be
trusted: every tensor's byte range must equal dtype size x element count, the
ranges must tile the data section exactly (no gaps, no overlaps) and end at the
real end of the file. Loaders that trust declared sizes read or allocate what
the file never held (Ollama's "Bleeding Llama"). Nothing is unpickled here;
nothing but the header is read.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

# The limit safetensors itself enforces on the header.
MAX_HEADER_BYTES = 100_000_000

# Bytes per element of each dtype safetensors writes; anything else is refused.
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


class InvalidWeights(ValueError):
    """The file is not a well-formed safetensors file (the message names no path)."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets into the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True, slots=True)
class WeightsInfo:
    file_bytes: int
    header_bytes: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    @property
    def tensor_bytes(self) -> int:
        """What the tensors occupy once loaded: the bytes charged to a memory tier."""
        return sum(t.nbytes for t in self.tensors.values())


def read_weights_info(path: Path) -> WeightsInfo:
    """The validated header of the safetensors file at ``path``; InvalidWeights otherwise."""
    try:
        with open(path, "rb") as f:
            file_bytes = os.fstat(f.fileno()).st_size
            if file_bytes < 8:
                raise InvalidWeights("weights file is shorter than a safetensors header")
            (header_bytes,) = struct.unpack("<Q", f.read(8))
            if header_bytes > MAX_HEADER_BYTES or 8 + header_bytes > file_bytes:
                raise InvalidWeights("safetensors header length is larger than the file or the limit")
            raw = f.read(header_bytes)
    except OSError as exc:
        raise InvalidWeights(f"weights file could not be read ({exc.strerror or type(exc).__name__})") from None
    if len(raw) != header_bytes:
        raise InvalidWeights("weights file changed while its header was read")
    return parse_header(raw, file_bytes)


def parse_header(raw: bytes, file_bytes: int) -> WeightsInfo:
    """Check a header's JSON against the size of the file it came from."""
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidWeights("safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise InvalidWeights("safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidWeights("safetensors __metadata__ must map strings to strings")
    data_bytes = file_bytes - 8 - len(raw)
    tensors = {name: _tensor(name, entry) for name, entry in header.items()}
    cursor = 0
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if info.begin != cursor:
            raise InvalidWeights("safetensors tensors overlap or leave gaps in the data section")
        cursor = info.end
    if cursor != data_bytes:
        raise InvalidWeights(f"safetensors data section holds {data_bytes} bytes, the tensors declare {cursor}")
    return WeightsInfo(file_bytes, len(raw), tensors, dict(metadata))


def _tensor(name: str, entry: Any) -> TensorInfo:
    if not isinstance(entry, dict):
        raise InvalidWeights("safetensors tensor entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise InvalidWeights(f"tensor {name[:64]!r} has an unsupported dtype")
    if not isinstance(shape, list) or not all(_count(d) for d in shape):
        raise InvalidWeights(f"tensor {name[:64]!r} has a bad shape")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_count(o) for o in offsets):
        raise InvalidWeights(f"tensor {name[:64]!r} has bad data offsets")
    begin, end = offsets
    if end < begin:
        raise InvalidWeights(f"tensor {name[:64]!r} ends before it begins")
    if end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise InvalidWeights(f"tensor {name[:64]!r}: byte range does not match its dtype and shape")
    return TensorInfo(dtype, tuple(shape), begin, end)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
