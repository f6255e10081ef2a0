"""Generate a demo model zoo: real architectures with seeded random weights.

Models cycle through the architectures (mlp, cnn, transformer, logreg) with
sizes spread geometrically from ``min_size`` to ``max_size`` (or taken from an
explicit list), and each is written as ``<out>/<name>/1/model.safetensors`` plus
``config.json``. The same seed gives the same zoo, byte for byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import torch
from safetensors.torch import save_file

from worker.architectures import ARCHITECTURES
from worker.model_config import ModelConfig
from worker.repository import CONFIG_FILE, WEIGHTS_FILE

ORDER = ("mlp", "cnn", "transformer", "logreg")
MAX_BATCH = 64


@dataclass(frozen=True, slots=True)
class ZooModel:
    name: str
    architecture: str
    size_bytes: int
    path: Path


def sizes_between(count: int, min_size: int, max_size: int) -> list[int]:
    if count == 1:
        return [max_size]
    ratio = (max_size / min_size) ** (1 / (count - 1))
    return [int(min_size * ratio**i) for i in range(count)]


def args_for(architecture: str, size_bytes: int) -> dict[str, Any]:
    """Architecture arguments whose FP32 weights come close to ``size_bytes``."""
    params = max(size_bytes // 4, 1024)
    if architecture == "mlp":
        # 64 -> w -> w -> w -> 10: about 2w^2 + 74w parameters.
        width = max(16, int((-74 + math.sqrt(74**2 + 8 * params)) / 4))
        return {"in_features": 64, "hidden": [width, width, width], "out_features": 10}
    if architecture == "logreg":
        # sparse: a vocab x 10 weight table plus 10 biases; each request names 32 feature ids.
        return {"vocab": max(16, (params - 10) // 10), "active": 32, "classes": 10}
    if architecture == "cnn":
        # three 3x3 conv blocks (w, 2w, 4w) + a 4x4x4w -> 10 head: about 90w^2 + 700w.
        width = max(4, int((-700 + math.sqrt(700**2 + 360 * params)) / 180))
        return {"channels": 3, "size": 32, "width": width, "classes": 10}
    if architecture == "transformer":
        # 2 layers of ~12 d^2 plus a 1000 x d embedding.
        vocab, layers = 1000, 2
        d = int((-(vocab + 32) + math.sqrt((vocab + 32) ** 2 + 4 * 12 * layers * params)) / (2 * 12 * layers))
        d = max(32, d // 32 * 32)
        return {"vocab": vocab, "d_model": d, "heads": 4, "layers": layers, "seq_len": 32, "classes": 4}
    raise ValueError(f"unknown architecture {architecture!r}")


def make_model(out: Path, name: str, architecture: str, args: dict[str, Any], seed: int) -> ZooModel:
    arch = ARCHITECTURES[architecture]
    torch.manual_seed(seed)
    module = arch.build(args)
    # Random running statistics, so batch norm does real work and outputs are not trivial.
    for buf_name, buf in module.named_buffers():
        if buf_name.endswith("running_var"):
            buf.uniform_(0.5, 1.5)
        elif buf_name.endswith("running_mean"):
            buf.normal_(0, 0.1)
    inputs, outputs = arch.interface(args)
    config = ModelConfig(architecture, args, inputs, outputs, max_batch_size=MAX_BATCH)
    target = out / name / "1"
    target.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(target / WEIGHTS_FILE))
    (target / CONFIG_FILE).write_bytes(orjson.dumps(config.to_json(), option=orjson.OPT_INDENT_2))
    return ZooModel(name, architecture, (target / WEIGHTS_FILE).stat().st_size, target)


def make_zoo(
    out: Path,
    count: int = 12,
    min_size: int = 1 << 20,
    max_size: int = 16 << 20,
    sizes: list[int] | None = None,
    architectures: tuple[str, ...] = ORDER,
    seed: int = 0,
) -> list[ZooModel]:
    if count < 1:
        raise ValueError("count must be at least 1")
    if min_size > max_size:
        raise ValueError("the minimum size is above the maximum")
    for architecture in architectures:
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    targets = sizes if sizes else sizes_between(count, min_size, max_size)
    made = []
    for i in range(count):
        architecture = architectures[i % len(architectures)]
        size = targets[i % len(targets)]
        name = f"{architecture}-{i:02d}"
        made.append(make_model(out, name, architecture, args_for(architecture, size), seed * 100_003 + i))
    return made


IDENTITY_DATATYPES = (
    "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "FP32", "FP64", "BYTES",
)  # fmt: skip


def make_identities(out: Path, datatypes: tuple[str, ...] = IDENTITY_DATATYPES, width: int = 4) -> list[ZooModel]:
    """One ``identity`` model per V2 datatype (``identity-fp32``, ...): the protocol's
    test models, which answer their input unchanged."""
    return [make_model(out, f"identity-{d.lower()}", "identity", {"datatype": d, "width": width}, 0) for d in datatypes]
