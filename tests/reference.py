"""Independent reference: run a zoo model directly with torch, no server code path.

The module is built normally on the CPU (real allocation) and its weights copied
in with a plain ``load_state_dict``, unlike the worker's meta-device, zero-copy
path, so a bug in either shows up as a mismatch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from safetensors.torch import load_file

from worker.architectures import ARCHITECTURES


def config(zoo: Path, name: str) -> dict[str, Any]:
    return orjson.loads((zoo / name / "1" / "config.json").read_bytes())  # type: ignore[no-any-return]


def run_reference(zoo: Path, name: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    cfg = config(zoo, name)
    module = ARCHITECTURES[cfg["architecture"]].build(cfg["args"])
    module.load_state_dict(load_file(zoo / name / "1" / "model.safetensors"))
    module.eval()
    with torch.no_grad():
        out = module(*[torch.from_numpy(a) for a in inputs])
    outs = out if isinstance(out, tuple) else (out,)
    return [o.numpy() for o in outs]


def sample_inputs(zoo: Path, name: str, batch: int, seed: int) -> list[tuple[str, str, np.ndarray]]:
    """(name, datatype, array) for each of the model's inputs, random but valid."""
    rng = np.random.default_rng(seed)
    cfg = config(zoo, name)
    result = []
    for spec in cfg["inputs"]:
        shape = [batch if d == -1 else d for d in spec["shape"]]
        if spec["datatype"] == "INT64":
            arr = rng.integers(0, int(cfg["args"]["vocab"]), size=shape, dtype=np.int64)
        else:
            arr = rng.standard_normal(shape).astype(np.float32)
        result.append((spec["name"], spec["datatype"], arr))
    return result


def infer_body(inputs: list[tuple[str, str, np.ndarray]], request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {"name": n, "datatype": dt, "shape": list(a.shape), "data": a.ravel().tolist()} for n, dt, a in inputs
        ]
    }
    if request_id is not None:
        body["id"] = request_id
    return body
