"""The interface check: does a model take what its config.json declares and return it?

Names, datatypes and shapes come from config.json for every format. When a
model loads, one forward on a synthetic input (zeros of each declared input's
datatype and shape, two rows when the model batches, so a model that cannot
batch is caught too) must return the declared outputs: as many, each of its
datatype, of its rank, with every fixed dimension equal and the batch
dimension equal to the rows given. A mismatch fails the load with a message
that names it (the version is UNAVAILABLE with that reason; the worker keeps
serving the others). ``check_outputs`` also guards every batch (a few
comparisons), so a model loaded with ``"warmup": false`` (no forward at load)
still never answers otherwise than declared.
"""

from __future__ import annotations

import numpy as np

from protocol.datatypes import NUMPY_DTYPES
from protocol.errors import ModelUnavailable
from protocol.types import TensorSpec
from worker.model_config import ModelConfig

_V2_NAMES = {dtype: name for name, dtype in NUMPY_DTYPES.items()}


class InterfaceMismatch(ModelUnavailable):
    """The model does not take or return what its config.json declares."""


def synthetic_rows(config: ModelConfig) -> int:
    return min(2, config.max_batch_size) if config.max_batch_size > 0 else 1


def synthetic_inputs(config: ModelConfig, rows: int | None = None) -> list[np.ndarray]:
    """Zeros of each declared input (token id 0 is always valid), -1 dimensions as
    ``rows`` (default ``synthetic_rows``) for the batch and 1 elsewhere."""
    rows = synthetic_rows(config) if rows is None else rows
    arrays = []
    for spec in config.inputs:
        shape = tuple((rows if i == 0 and config.max_batch_size > 0 else 1) if d == -1 else d
                      for i, d in enumerate(spec.shape))  # fmt: skip
        if spec.datatype == "BYTES":
            arrays.append(np.full(shape, b"", dtype=object))
        else:
            arrays.append(np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype]))
    return arrays


def datatype_of(array: np.ndarray) -> str:
    """The V2 name of an array's element type ('BYTES' for strings and objects)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    name = _V2_NAMES.get(array.dtype)
    return name if name is not None else str(array.dtype)  # str() of a dtype costs ~3 us: only when unknown


def check_outputs(where: str, config: ModelConfig, outputs: list[np.ndarray], rows: int | None) -> None:
    """InterfaceMismatch naming the first way ``outputs`` differ from the declared ones;
    ``rows``: the batch the inputs had (None: unknown, the batch dimension is not checked)."""
    declared = config.outputs
    if len(outputs) != len(declared):
        names = ", ".join(spec.name for spec in declared)
        raise InterfaceMismatch(
            f"{where}: the model returns {len(outputs)} output(s), config.json declares {len(declared)} ({names})"
        )
    for spec, array in zip(declared, outputs, strict=True):
        got = datatype_of(array)
        if got != spec.datatype:
            raise InterfaceMismatch(f"{where}: output '{spec.name}' is {got}, config.json declares {spec.datatype}")
        if not _shape_fits(spec, array.shape, rows if config.max_batch_size > 0 else None):
            raise InterfaceMismatch(
                f"{where}: output '{spec.name}' has shape {list(array.shape)} for {_rows(rows)}, config.json "
                f"declares {list(spec.shape)}"
            )


def describe_inputs(specs: tuple[TensorSpec, ...]) -> str:
    return ", ".join(f"'{s.name}' {s.datatype} {list(s.shape)}" for s in specs)


def _shape_fits(spec: TensorSpec, shape: tuple[int, ...], rows: int | None) -> bool:
    if len(shape) != len(spec.shape):
        return False
    for i, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
        if i == 0 and rows is not None:
            if got != rows:
                return False
        elif want != -1 and got != want:
            return False
    return True


def _rows(rows: int | None) -> str:
    return "the inputs given" if rows is None else f"a batch of {rows}"
