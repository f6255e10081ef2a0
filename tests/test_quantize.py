"""The per-model INT8 opt-in (``"quantize": "int8"`` in config.json): the Linear
layers really run with INT8 weights, answers stay within quantization error of
the FP32 model's, such a model never goes to a device tier, and a bad value is
refused when the config is read."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from tests.harness import request, start_worker, stop_all
from tests.reference import infer_body, run_reference, sample_inputs
from worker.errors import InvalidModelConfig
from worker.formats import ModelPager
from worker.model_config import ModelConfig


def quantized_layers(module: torch.nn.Module) -> int:
    """How many of the module's layers run with INT8 weights."""
    from torch.ao.nn.quantized.dynamic import Linear

    return sum(isinstance(m, Linear) for m in module.modules())


def _int8_copy(zoo: Path, root: Path, name: str = "mlp-00") -> Path:
    """The zoo's ``name`` as ``name`` (FP32) and ``name-int8`` (opted in) in a repository of their own."""
    shutil.copytree(zoo / name, root / name)
    target = root / f"{name}-int8"
    shutil.copytree(zoo / name, target)
    config = orjson.loads((target / "1" / "config.json").read_bytes())
    (target / "1" / "config.json").write_bytes(orjson.dumps({**config, "quantize": "int8"}))
    return root


def test_config_takes_int8_and_refuses_anything_else(zoo: Path) -> None:
    raw = orjson.loads((zoo / "mlp-00" / "1" / "config.json").read_bytes())
    config = ModelConfig.from_json({**raw, "quantize": "int8"})
    assert config.quantize == "int8" and config.to_json()["quantize"] == "int8"
    assert "quantize" not in ModelConfig.from_json(raw).to_json()
    with pytest.raises(InvalidModelConfig, match="unknown quantize"):
        ModelConfig.from_json({**raw, "quantize": "int4"})
    onnx = {k: v for k, v in raw.items() if k != "architecture"}
    with pytest.raises(InvalidModelConfig, match="safetensors"):
        ModelConfig.from_json({**onnx, "format": "onnx", "quantize": "int8"})


def test_pager_quantizes_the_linear_layers_and_keeps_the_model_off_devices(zoo: Path, tmp_path: Path) -> None:
    root = _int8_copy(zoo, tmp_path)
    pager = ModelPager()
    plain = pager.load(("mlp-00", "1"), root / "mlp-00" / "1")
    int8 = pager.load(("mlp-00-int8", "1"), root / "mlp-00-int8" / "1")
    assert isinstance(plain.module, torch.nn.Module) and isinstance(int8.module, torch.nn.Module)
    linears = sum(isinstance(m, torch.nn.Linear) for m in plain.module.modules())
    assert linears > 0 and quantized_layers(plain.module) == 0
    assert quantized_layers(int8.module) == linears
    assert pager.device_capable(("mlp-00", "1"), root / "mlp-00" / "1")
    assert not pager.device_capable(("mlp-00-int8", "1"), root / "mlp-00-int8" / "1")


def test_a_worker_serves_the_int8_model_within_quantization_error(zoo: Path, tmp_path: Path, logdir: Path) -> None:
    root = _int8_copy(zoo, tmp_path)
    inputs = sample_inputs(zoo, "mlp-00", batch=4, seed=7)
    [reference] = run_reference(zoo, "mlp-00", [a for _, _, a in inputs])
    worker = start_worker(root, logdir).wait_ready()
    try:
        answers = {}
        for name in ("mlp-00", "mlp-00-int8"):
            resp = request(worker.url, "POST", f"/v2/models/{name}/infer", infer_body(inputs))
            assert resp.status == 200, resp.body
            [output] = resp.json()["outputs"]
            answers[name] = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
        np.testing.assert_allclose(answers["mlp-00"], reference, rtol=1e-5, atol=1e-5)
        scale = float(np.abs(reference).max())
        error = float(np.abs(answers["mlp-00-int8"] - reference).max())
        assert error <= 0.05 * scale, f"INT8 answers {error} off, outputs of magnitude {scale}"
    finally:
        stop_all([worker.proc])
