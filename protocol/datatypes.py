"""V2 tensor datatypes and their numpy equivalents.

The Open Inference Protocol names element types (``FP32``, ``INT64``, ``BYTES``...);
this module maps them to numpy dtypes and says which JSON value kinds each accepts.
"""

from __future__ import annotations

import numpy as np

# V2 name -> numpy dtype. BYTES is carried as an object array of ``bytes``.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

DATATYPES: frozenset[str] = frozenset(NUMPY_DTYPES)

# numpy "kind" letters a JSON array may decode to for each V2 datatype:
# b bool, i signed int, u unsigned int, f float, U str.
ACCEPTED_KINDS: dict[str, str] = {
    "BOOL": "b",
    "INT8": "iu",
    "INT16": "iu",
    "INT32": "iu",
    "INT64": "iu",
    "UINT8": "iu",
    "UINT16": "iu",
    "UINT32": "iu",
    "UINT64": "iu",
    "FP16": "iuf",
    "FP32": "iuf",
    "FP64": "iuf",
    "BYTES": "U",
}
