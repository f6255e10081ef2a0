"""The one pager the memory manager loads every format through.

    format        weights file         built by                                   device tier
    safetensors   model.safetensors    a built-in architecture, or allowed code   yes (mapped host copy kept);
                                                                                 no with "quantize": "int8"
    onnx          model.onnx           onnxruntime (the graph is in the file)     no: serves from the CPU tier
                                       (charged what its session holds: not shared)

``ModelPager`` reads the version's config.json and hands each call to the
format's pager, so paging, budgets, eviction, batching, cache keys, metrics,
``X-Model-Source`` and ``/admin/memory`` are the same for every format. Before
anything is measured or loaded the version directory is checked again for
pickles and archives (``worker.pickle_guard``: the scan refused them already;
this covers files that appeared since), and none is ever opened.
"""

from __future__ import annotations

from pathlib import Path

from protocol.errors import ModelUnavailable
from worker.custom_code import CodePolicy
from worker.device import Device
from worker.loader import read_config
from worker.manifest import MANIFEST_FILE
from worker.model_config import WEIGHTS_FILES
from worker.onnx_pager import held_bytes, load_onnx
from worker.paging import Key, TorchPager, describe, warm_up_on
from worker.pickle_guard import RefusedFile, refuse_pickles
from worker.repository import CONFIG_FILE
from worker.runner import LoadedModel

PARSED_FILES = (CONFIG_FILE, MANIFEST_FILE, *WEIGHTS_FILES.values())


def check_unpickled(key: Key, directory: Path) -> None:
    try:
        refuse_pickles(directory, PARSED_FILES)
    except RefusedFile as exc:
        raise ModelUnavailable(f"{describe(key)}: {exc}") from None


class ModelPager:
    """Dispatches by format: safetensors to ``TorchPager``, onnx to onnxruntime."""

    def __init__(self, code: CodePolicy | None = None, onnx_threads: int = 1) -> None:
        self.safetensors = TorchPager(code)
        self.onnx_threads = onnx_threads

    def weights_bytes(self, key: Key, directory: Path) -> int:
        check_unpickled(key, directory)
        config = read_config(describe(key), directory)
        if config.format == "onnx":
            if not (directory / config.weights_file).is_file():
                raise ModelUnavailable(f"{describe(key)}: {config.weights_file} is missing")
            files = [f for f in directory.iterdir() if f.is_file() and f.name not in (CONFIG_FILE, MANIFEST_FILE)]
            return held_bytes(sum(f.stat().st_size for f in files))
        return self.safetensors.weights_bytes(key, directory)

    def load(self, key: Key, directory: Path) -> LoadedModel:
        check_unpickled(key, directory)
        where = describe(key)
        config = read_config(where, directory)
        if config.format == "onnx":
            session = load_onnx(where, config, directory / config.weights_file, self.onnx_threads)
            return LoadedModel(key[0], key[1], config, session)
        return self.safetensors.load(key, directory)

    def to_device(self, key: Key, model: LoadedModel, device: Device) -> LoadedModel:
        if model.config.format != "safetensors":
            raise ModelUnavailable(f"{describe(key)}: {model.config.format} models serve from the CPU tier")
        return self.safetensors.to_device(key, model, device)

    def warm_up(self, key: Key, model: LoadedModel, device: Device | None) -> None:
        if model.config.warmup:
            warm_up_on(model, device)

    def pinned(self, model: LoadedModel) -> bool:
        return model.config.pinned

    def device_capable(self, key: Key, directory: Path) -> bool:
        config = read_config(describe(key), directory)
        return config.format == "safetensors" and config.quantize is None
