"""Process warm-up: pay each architecture's one-time library initialisation at start.

The first model of an architecture in a fresh process pays for torch's lazy
set-up, measured here at 1.3-2.3 s for the first transformer against 13-21 ms
for the next, larger one. Most of it is one import: initialising an embedding's
parameters on the meta device goes through ``torch._refs.normal_``, whose
wrapper imports ``torch._dynamo`` (~1.8 s) the first time; add kernel
selection, the first mapped safetensors file and, with a GPU, the device
context. ``warm_up_process``
builds a tiny instance of every built-in architecture, writes it as a
safetensors file and loads it through the real pager (mapped, meta-device
build, warm-up inference, and the device copy when there is one), so a cold
model's first request pays only for its own load.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from worker.architectures import ARCHITECTURES
from worker.device import Device
from worker.onnx_pager import available as onnx_available
from worker.paging import TorchPager
from worker.zoo import make_model

log = logging.getLogger(__name__)


def warm_up_process(device: Device | None = None) -> dict[str, float]:
    """Seconds each architecture's tiny instance took to write, load and run (blocking)."""
    pager = TorchPager()
    spent: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="affinity-warmup-") as tmp:
        for name, arch in ARCHITECTURES.items():
            if arch.example is None:
                continue
            started = time.perf_counter()
            made = make_model(Path(tmp), f"warmup-{name}", name, arch.example, seed=0)
            key = (made.name, "1")
            model = pager.load(key, made.path)
            pager.warm_up(key, model, None)
            if device is not None:
                pager.warm_up(key, pager.to_device(key, model, device), device)
            spent[name] = time.perf_counter() - started
    if onnx_available():  # ONNX models: the runtime's import, paid now rather than by a first request
        started = time.perf_counter()
        import onnxruntime  # noqa: F401

        spent["onnxruntime"] = time.perf_counter() - started
    log.info("process warm-up: %s", ", ".join(f"{n} {s * 1000:.0f}ms" for n, s in spent.items()))
    return spent
