"""Paging one model format in and out of memory: the seam the manager loads through.

The memory manager knows bytes, tiers and policies; a ``Pager`` knows a model
format. It says how many bytes a model will occupy before loading it (from the
weights' header), loads it into host memory, copies a host-resident model to a
device, and warms a model up where it will serve (one synthetic inference, so
the first request does not pay allocation and kernel selection). The manager
calls it in its load thread pool, so every method may block. ``TorchPager``
serves the built-in architectures from safetensors: host models keep their
weights memory-mapped (shared between processes through the page cache), and a
device copy costs one host-to-device copy per tensor. Other formats (ONNX, user
code) plug in as another ``Pager`` with the same accounting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch

from protocol.datatypes import NUMPY_DTYPES
from protocol.errors import ModelUnavailable
from worker.device import Device
from worker.loader import copy_module, load_module_from, read_config
from worker.repository import WEIGHTS_FILE
from worker.runner import LoadedModel
from worker.weights import InvalidWeights, read_weights_info

Key = tuple[str, str]
M = TypeVar("M")


class Pager(Protocol[M]):
    def weights_bytes(self, key: Key, directory: Path) -> int:
        """The bytes the model will occupy in memory, known before loading (blocking)."""
        ...

    def load(self, key: Key, directory: Path) -> M:
        """The model resident in host memory (blocking)."""
        ...

    def to_device(self, key: Key, model: M, device: Device) -> M:
        """A copy of a host-resident model on ``device`` (blocking)."""
        ...

    def warm_up(self, key: Key, model: M, device: Device | None) -> None:
        """Run the model once where it will serve (``device``, or the host when None)."""
        ...

    def pinned(self, model: M) -> bool:
        """Whether the model's own configuration asks never to be evicted."""
        ...


def describe(key: Key) -> str:
    return f"model '{key[0]}' version {key[1]}"


class TorchPager:
    """Built-in architectures with safetensors weights."""

    def weights_bytes(self, key: Key, directory: Path) -> int:
        try:
            return read_weights_info(directory / WEIGHTS_FILE).tensor_bytes
        except InvalidWeights as exc:
            raise ModelUnavailable(f"{describe(key)}: weights are not a valid safetensors file ({exc})") from None

    def load(self, key: Key, directory: Path) -> LoadedModel:
        where = describe(key)
        config = read_config(where, directory)
        return LoadedModel(key[0], key[1], config, load_module_from(where, config, directory / WEIGHTS_FILE))

    def to_device(self, key: Key, model: LoadedModel, device: Device) -> LoadedModel:
        module = copy_module(describe(key), model.config, model.module, device.copy_in)
        device.synchronize()
        return LoadedModel(model.name, model.version, model.config, module)

    def warm_up(self, key: Key, model: LoadedModel, device: Device | None) -> None:
        if model.config.warmup:
            warm_up_on(model, device)

    def pinned(self, model: LoadedModel) -> bool:
        return model.config.pinned


def synthetic_inputs(model: LoadedModel) -> list[np.ndarray]:
    """Zeros of each input's shape and datatype, batch 1 (token id 0 is always valid)."""
    arrays = []
    for spec in model.config.inputs:
        shape = tuple(1 if d == -1 else d for d in spec.shape)
        if spec.datatype == "BYTES":
            arrays.append(np.full(shape, b"", dtype=object))
        else:
            arrays.append(np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype]))
    return arrays


def run_on(model: LoadedModel, arrays: list[np.ndarray], device: Device | None) -> list[np.ndarray]:
    """One forward pass, inputs copied to ``device`` and outputs back when there is one."""
    if getattr(model.module, "numpy_forward", False):  # a module that runs on the arrays themselves (identity)
        result = model.module(*arrays)
        outs_np = result if isinstance(result, tuple) else (result,)
        return [np.ascontiguousarray(o) for o in outs_np]
    tensors = [torch.from_numpy(a) for a in arrays]
    if device is not None:
        tensors = [device.copy_in(t) for t in tensors]
    with torch.inference_mode():
        result = model.module(*tensors)
    outs = result if isinstance(result, tuple) else (result,)
    if device is not None:
        outs = tuple(device.copy_out(o) for o in outs)
    return [o.contiguous().numpy() for o in outs]


def warm_up_on(model: LoadedModel, device: Device | None) -> None:
    """One inference on a synthetic input, so the first real request does not pay
    allocation and kernel selection; a model that cannot run this fails to load."""
    try:
        run_on(model, synthetic_inputs(model), device)
    except Exception as exc:  # torch raises a wide range; the model is unusable either way
        raise ModelUnavailable(
            f"{describe((model.name, model.version))}: warm-up failed ({type(exc).__name__})"
        ) from None
