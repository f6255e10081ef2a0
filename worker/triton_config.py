"""A model's configuration in Triton's JSON shape (``GET /v2/models/{name}/config``),
for tools such as perf_analyzer that read batching limits from it."""

from __future__ import annotations

from typing import Any

from protocol.types import TensorSpec
from worker.model_config import ModelConfig

# Each format's platform, as Triton names its own ("onnxruntime_onnx").
PLATFORMS = {"safetensors": "pytorch_safetensors", "onnx": "onnxruntime_onnx"}


def _tensor(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    dims = list(spec.shape[1:] if batched else spec.shape)
    return {
        "name": spec.name,
        "data_type": f"TYPE_{'STRING' if spec.datatype == 'BYTES' else spec.datatype}",
        "dims": dims,
    }


def triton_model_config(name: str, config: ModelConfig) -> dict[str, Any]:
    batched = config.max_batch_size > 0
    return {
        "name": name,
        "platform": PLATFORMS[config.format],
        "backend": "affinity",
        "max_batch_size": config.max_batch_size,
        "input": [_tensor(t, batched) for t in config.inputs],
        "output": [_tensor(t, batched) for t in config.outputs],
        "parameters": {"architecture": {"string_value": config.architecture}},
    }
