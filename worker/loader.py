"""Build a model from its repository entry without copying its weights.

The module is built on the meta device (no allocation, no random init), then
the safetensors file's tensors, memory-mapped by safetensors, are attached with
``load_state_dict(assign=True)``: weights stay in the page cache and worker
processes on one host share them. Nothing here ever unpickles.
"""

from __future__ import annotations

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from protocol.errors import ModelUnavailable
from worker.architectures import ARCHITECTURES
from worker.model_config import ModelConfig
from worker.repository import WEIGHTS_FILE, ModelVersion


def load_module(entry: ModelVersion) -> nn.Module:
    config = entry.config
    if config is None:
        raise ModelUnavailable(f"model '{entry.name}' version {entry.version} is unusable: {entry.problem}")
    where = f"model '{entry.name}' version {entry.version}"
    arch = ARCHITECTURES.get(config.architecture)
    if arch is None:
        raise ModelUnavailable(f"{where}: unknown architecture '{config.architecture}'")
    _check_interface(where, config)
    try:
        with torch.device("meta"):
            module = arch.build(config.args)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelUnavailable(f"{where}: bad architecture arguments ({exc})") from None
    try:
        state = load_file(entry.path / WEIGHTS_FILE)
    except (SafetensorError, OSError) as exc:
        raise ModelUnavailable(f"{where}: weights could not be read ({type(exc).__name__})") from None
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
