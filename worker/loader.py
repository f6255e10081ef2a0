"""Build a model from its repository entry without copying its weights.

The module is built on the meta device (no allocation, no random init), then
the safetensors file's tensors, memory-mapped by safetensors, are attached with
``load_state_dict(assign=True)``: weights stay in the page cache and worker
processes on one host share them. A copy for an accelerator is built the same
way, from device tensors copied once from the mapped ones. Nothing here ever
unpickles.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from protocol.errors import ModelUnavailable
from worker.architectures import ARCHITECTURES
from worker.errors import InvalidModelConfig
from worker.model_config import ModelConfig
from worker.repository import CONFIG_FILE


def read_config(where: str, directory: Path) -> ModelConfig:
    try:
        return ModelConfig.from_bytes((directory / CONFIG_FILE).read_bytes())
    except FileNotFoundError:
        raise ModelUnavailable(f"{where}: config.json is missing") from None
    except InvalidModelConfig as exc:
        raise ModelUnavailable(f"{where}: {exc}") from None


def load_module_from(where: str, config: ModelConfig, weights: Path) -> nn.Module:
    """The module with the file's tensors mapped in place (no copy)."""
    module = _skeleton(where, config)
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as exc:
        raise ModelUnavailable(f"{where}: weights could not be read ({type(exc).__name__})") from None
    return _attach(where, module, state)


def copy_module(
    where: str, config: ModelConfig, module: nn.Module, copy: Callable[[torch.Tensor], torch.Tensor]
) -> nn.Module:
    """A second module whose every tensor is ``copy`` of ``module``'s (one
    host-to-device copy per tensor); ``module`` itself is left as it was."""
    state = {name: copy(tensor) for name, tensor in module.state_dict().items()}
    return _attach(where, _skeleton(where, config), state)


def _skeleton(where: str, config: ModelConfig) -> nn.Module:
    arch = ARCHITECTURES.get(config.architecture)
    if arch is None:
        raise ModelUnavailable(f"{where}: unknown architecture '{config.architecture}'")
    _check_interface(where, config)
    try:
        with torch.device("meta"):
            return arch.build(config.args)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelUnavailable(f"{where}: bad architecture arguments ({exc})") from None


def _attach(where: str, module: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError:
        raise ModelUnavailable(f"{where}: weights do not match the architecture") from None
    module.eval()
    module.requires_grad_(False)
    return module


def _check_interface(where: str, config: ModelConfig) -> None:
    arch = ARCHITECTURES[config.architecture]
    try:
        inputs, outputs = arch.interface(config.args)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelUnavailable(f"{where}: bad architecture arguments ({exc})") from None
    if [(t.name, t.datatype) for t in inputs] != [(t.name, t.datatype) for t in config.inputs] or [
        (t.name, t.datatype) for t in outputs
    ] != [(t.name, t.datatype) for t in config.outputs]:
        raise ModelUnavailable(f"{where}: config inputs/outputs do not match architecture '{config.architecture}'")
