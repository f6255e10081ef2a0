"""Raw tensor bytes <-> numpy arrays (the worker's side of the binary
extension and of gRPC's raw contents). Callers check the bytes first
(``protocol.binary_codec.check_raw``); this only converts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from protocol.datatypes import NUMPY_DTYPES
from protocol.packing import pack_bytes_elements, unpack_bytes_elements

# Little-endian numpy dtypes, so the wire's byte order holds on any host.
_WIRE_DTYPES = {name: dt.newbyteorder("<") for name, dt in NUMPY_DTYPES.items() if name != "BYTES"}


def array_from_raw(datatype: str, shape: Sequence[int], raw: bytes | memoryview, name: str) -> np.ndarray:
    """A writable array of the tensor's shape (torch refuses read-only buffers)."""
    if datatype == "BYTES":
        elements = unpack_bytes_elements(raw, name)
        arr = np.empty(len(elements), dtype=object)
        arr[:] = elements
        return arr.reshape(shape)
    if datatype == "BOOL":
        return (np.frombuffer(raw, dtype=np.uint8) != 0).reshape(shape)
    flat = np.frombuffer(raw, dtype=_WIRE_DTYPES[datatype]).astype(NUMPY_DTYPES[datatype], copy=True)
    return flat.reshape(shape)


def raw_from_array(datatype: str, arr: np.ndarray) -> bytes:
    if datatype == "BYTES":
        return pack_bytes_elements([b if isinstance(b, bytes) else str(b).encode() for b in arr.ravel()])
    return np.ascontiguousarray(arr, dtype=_WIRE_DTYPES[datatype]).tobytes()
