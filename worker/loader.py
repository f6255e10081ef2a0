"""Build a model from its repository entry without copying its weights.

The module is built on the meta device (no allocation, no random init) by a
built-in architecture or by the operator's allowed factory
(``worker.custom_code``), then the safetensors file's tensors, memory-mapped by
safetensors, are attached with ``load_state_dict(assign=True)``: weights stay
in the page cache and worker processes on one host share them. A copy for an
accelerator is built the same way, from device tensors copied once from the
mapped ones. Buffers a module computes itself and does not save (non-persistent
ones) are not in the file: they come from one ordinary build of the module (or,
for a device copy, from the host module). Nothing here ever unpickles.
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
from worker.custom_code import CodePolicy, build_module
from worker.errors import InvalidModelConfig
from worker.model_config import ModelConfig
from worker.repository import CONFIG_FILE

Tensors = dict[str, torch.Tensor]


def read_config(where: str, directory: Path) -> ModelConfig:
    try:
        return ModelConfig.from_bytes((directory / CONFIG_FILE).read_bytes())
    except FileNotFoundError:
        raise ModelUnavailable(f"{where}: config.json is missing") from None
    except InvalidModelConfig as exc:
        raise ModelUnavailable(f"{where}: {exc}") from None


def load_module_from(where: str, config: ModelConfig, weights: Path, code: CodePolicy | None = None) -> nn.Module:
    """The module with the file's tensors mapped in place (no copy)."""
    code = code or CodePolicy()
    module = _build(where, config, code, torch.device("meta"))
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as exc:
        raise ModelUnavailable(f"{where}: weights could not be read ({type(exc).__name__})") from None
    module = _attach(where, module, state)

    def built_buffers() -> Tensors:
        with torch.no_grad():
            return dict(_build(where, config, code, torch.device("cpu")).named_buffers())

    return _fill_unsaved_buffers(where, module, built_buffers)


def copy_module(
    where: str,
    config: ModelConfig,
    module: nn.Module,
    copy: Callable[[torch.Tensor], torch.Tensor],
    code: CodePolicy | None = None,
) -> nn.Module:
    """A second module whose every tensor is ``copy`` of ``module``'s (one
    host-to-device copy per tensor); ``module`` itself is left as it was."""
    state = {name: copy(tensor) for name, tensor in module.state_dict().items()}
    copied = _attach(where, _build(where, config, code or CodePolicy(), torch.device("meta")), state)
    return _fill_unsaved_buffers(where, copied, lambda: {n: copy(b) for n, b in module.named_buffers()})


def _build(where: str, config: ModelConfig, code: CodePolicy, device: torch.device) -> nn.Module:
    if config.code is not None:
        factory = code.factory(where, config.code)
        with device:
            return build_module(where, factory, config.args)
    arch = ARCHITECTURES.get(config.architecture)
    if arch is None:
        raise ModelUnavailable(f"{where}: unknown architecture '{config.architecture[:64]}'")
    try:
        with device:
            return arch.build(config.args)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelUnavailable(f"{where}: bad architecture arguments ({exc})") from None


def _attach(where: str, module: nn.Module, state: Tensors) -> nn.Module:
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelUnavailable(f"{where}: weights do not match the architecture ({_first_line(exc)})") from None
    module.eval()
    module.requires_grad_(False)
    return module


def _fill_unsaved_buffers(where: str, module: nn.Module, source: Callable[[], Tensors]) -> nn.Module:
    """Give buffers still on the meta device (non-persistent: not in the file) their values from ``source``."""
    left = [name for name, buffer in module.named_buffers() if buffer.is_meta]
    if not left:
        return module
    if any(p.is_meta for p in module.parameters()):
        raise ModelUnavailable(f"{where}: the weights file lacks some of the module's parameters")
    values = source()
    for name in left:
        value = values.get(name)
        if value is None or value.is_meta:
            raise ModelUnavailable(f"{where}: the module's buffer '{name[:64]}' has no value after loading")
        owner, _, leaf = name.rpartition(".")
        module.get_submodule(owner)._buffers[leaf] = value
    return module


def _first_line(exc: BaseException) -> str:
    """torch's load_state_dict message, first line and the names it lists (no paths in it)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[1:3])[:300] if len(lines) > 1 else (lines[0][:300] if lines else type(exc).__name__)
