"""Paging one model format in and out of memory: the seam the manager loads through.

The memory manager knows bytes, tiers and policies; a ``Pager`` knows a model
format. It says how many bytes a model will occupy before loading it (from the
weights' header), loads it into host memory, copies a host-resident model to a
device, and warms a model up where it will serve (one synthetic inference that
also checks the model's interface against its config, ``worker.interface``, so
the first request does not pay allocation and kernel selection). The manager
calls it in its load thread pool, so every method may block. ``TorchPager``
serves safetensors weights with a built-in architecture or the operator's
allowed code (``worker.custom_code``): host models keep their weights
memory-mapped (shared between processes through the page cache), and a device
copy costs one host-to-device copy per tensor. ``worker.formats.ModelPager``
dispatches between it and ONNX by the version's format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch

from protocol.errors import ModelUnavailable, ProtocolError
from worker.custom_code import CodePolicy
from worker.device import Device
from worker.interface import InterfaceMismatch, check_outputs, synthetic_rows
from worker.interface import synthetic_inputs as declared_inputs
from worker.loader import copy_module, load_module_from, read_config
from worker.quantize import quantize_module
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

    def device_capable(self, key: Key, directory: Path) -> bool:
        """Whether the model can serve from a device at all (blocking; after weights_bytes)."""
        ...


def describe(key: Key) -> str:
    return f"model '{key[0]}' version {key[1]}"


class TorchPager:
    """Safetensors weights with a built-in architecture or allowed user code."""

    code = CodePolicy()  # no user code unless given one

    def __init__(self, code: CodePolicy | None = None) -> None:
        if code is not None:
            self.code = code

    def weights_bytes(self, key: Key, directory: Path) -> int:
        config = read_config(describe(key), directory)
        try:
            return read_weights_info(directory / config.weights_file).tensor_bytes
        except InvalidWeights as exc:
            raise ModelUnavailable(f"{describe(key)}: weights are not a valid safetensors file ({exc})") from None

    def load(self, key: Key, directory: Path) -> LoadedModel:
        where = describe(key)
        config = read_config(where, directory)
        module = load_module_from(where, config, directory / config.weights_file, self.code)
        if config.quantize == "int8":
            module = quantize_module(module)
        return LoadedModel(key[0], key[1], config, module)

    def to_device(self, key: Key, model: LoadedModel, device: Device) -> LoadedModel:
        assert isinstance(model.module, torch.nn.Module)
        if model.config.quantize is not None:
            raise ModelUnavailable(
                f"{describe(key)}: a model with {model.config.quantize} weights serves from the CPU tier"
            )
        module = copy_module(describe(key), model.config, model.module, device.copy_in, self.code)
        device.synchronize()
        return LoadedModel(model.name, model.version, model.config, module)

    def warm_up(self, key: Key, model: LoadedModel, device: Device | None) -> None:
        if model.config.warmup:
            warm_up_on(model, device)

    def pinned(self, model: LoadedModel) -> bool:
        return model.config.pinned

    def device_capable(self, key: Key, directory: Path) -> bool:
        return read_config(describe(key), directory).quantize is None  # quantized kernels are CPU kernels


def synthetic_inputs(model: LoadedModel) -> list[np.ndarray]:
    """Zeros of each input's shape and datatype, batch 1 (token id 0 is always valid)."""
    return declared_inputs(model.config, rows=1)


def run_on(model: LoadedModel, arrays: list[np.ndarray], device: Device | None) -> list[np.ndarray]:
    """One forward pass, inputs copied to ``device`` and outputs back when there is one;
    the outputs are checked against the declared ones (InterfaceMismatch names a difference)."""
    module = model.module
    if isinstance(module, torch.nn.Module) and getattr(module, "numpy_forward", False):
        result = module(*arrays)  # a module that runs on the arrays themselves (identity)
        results = [np.ascontiguousarray(o) for o in (result if isinstance(result, tuple) else (result,))]
    elif isinstance(module, torch.nn.Module):
        tensors = [torch.from_numpy(a) for a in arrays]
        if device is not None:
            tensors = [device.copy_in(t) for t in tensors]
        with torch.inference_mode():
            result = module(*tensors)
        outs = _ordered_outputs(model, result)
        if device is not None:
            outs = [device.copy_out(o) for o in outs]
        results = [o.contiguous().numpy() for o in outs]
    else:
        results = module.run(arrays)
    rows = arrays[0].shape[0] if arrays and arrays[0].ndim and model.config.max_batch_size > 0 else None
    check_outputs(describe((model.name, model.version)), model.config, results, rows)
    return results


def _ordered_outputs(model: LoadedModel, result: object) -> list[torch.Tensor]:
    """A module's outputs in declared order: a tensor, a tuple or list of them, or a dict by output name."""
    where = describe((model.name, model.version))
    if isinstance(result, dict):
        missing = [spec.name for spec in model.config.outputs if spec.name not in result]
        if missing:
            returned = ", ".join(f"'{k}'" for k in result)
            raise InterfaceMismatch(f"{where}: output '{missing[0]}' is not among the module's outputs ({returned})")
        outs = [result[spec.name] for spec in model.config.outputs]
    elif isinstance(result, (tuple, list)):
        outs = list(result)
    else:
        outs = [result]
    for i, out in enumerate(outs):
        if not isinstance(out, torch.Tensor):
            raise InterfaceMismatch(f"{where}: the module's output {i} is a {type(out).__name__}, not a tensor")
    return outs


def warm_up_on(model: LoadedModel, device: Device | None) -> None:
    """One inference on a synthetic input, so the first real request does not pay
    allocation and kernel selection; it checks the model's interface, and a model
    that cannot run it or answers otherwise than declared fails to load."""
    arrays = declared_inputs(model.config, synthetic_rows(model.config))
    try:
        run_on(model, arrays, device)
    except ProtocolError:
        raise
    except Exception as exc:  # torch and onnxruntime raise a wide range; the model is unusable either way
        text = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise InterfaceMismatch(
            f"{describe((model.name, model.version))}: the model does not run on the inputs config.json declares "
            f"({_declared(model)}): {type(exc).__name__}{': ' + text if text else ''}"
        ) from None


def _declared(model: LoadedModel) -> str:
    return ", ".join(f"'{s.name}' {s.datatype} {list(s.shape)}" for s in model.config.inputs)
