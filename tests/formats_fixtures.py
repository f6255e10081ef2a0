"""Repositories of the user's own models for the format tests: custom code with
safetensors weights, ONNX graphs, and the pickle-bearing forms a repository may
carry (each a live payload that would create a marker file if ever unpickled)."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from safetensors.torch import save_file

from tests.custom_models import nets
from worker.custom_code import CodePolicy
from worker.formats import ModelPager
from worker.runner import LoadedModel

TESTS = Path(__file__).resolve().parent
SCORER_ARGS = {"features": 6, "vocab": 50, "dim": 8}
SCORER = "python:custom_models.nets:build"


def write_version(root: Path, name: str, config: dict[str, Any], files: dict[str, bytes], version: str = "1") -> Path:
    target = root / name / version
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_bytes(orjson.dumps(config))
    for file, data in files.items():
        (target / file).write_bytes(data)
    return target


def scorer_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    module = nets.build(**SCORER_ARGS)
    return {k: v.detach().contiguous() for k, v in module.state_dict().items()}


def write_scorer(root: Path, name: str, seed: int = 0, architecture: str = SCORER, **overrides: Any) -> Path:
    config = {"architecture": architecture, "args": SCORER_ARGS, **nets.interface(**SCORER_ARGS),
              "max_batch_size": 16, **overrides}  # fmt: skip
    target = write_version(root, name, config, {})
    save_file(scorer_state(seed), str(target / "model.safetensors"))
    return target


def run_scorer(directory: Path, query: np.ndarray, item_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The same model run directly: an ordinary CPU build with the weights copied in."""
    from safetensors.torch import load_file

    module = nets.build(**SCORER_ARGS)
    module.load_state_dict(load_file(directory / "model.safetensors"))
    module.eval()
    with torch.no_grad():
        out = module(torch.from_numpy(query), torch.from_numpy(item_ids))
    return {k: v.numpy() for k, v in out.items()}


def onnx_mlp(features: int = 8, hidden: int = 16, classes: int = 3, seed: int = 0, input_name: str = "pixels") -> bytes:
    """A real two-layer MLP as an ONNX graph (Gemm, Relu, Gemm, Softmax), dynamic batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.standard_normal((features, hidden)).astype(np.float32),
        "b1": rng.standard_normal(hidden).astype(np.float32),
        "w2": rng.standard_normal((hidden, classes)).astype(np.float32),
        "b2": rng.standard_normal(classes).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gemm", [input_name, "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def onnx_config(features: int = 8, classes: int = 3, input_name: str = "pixels", **overrides: Any) -> dict[str, Any]:
    return {
        "format": "onnx",
        "inputs": [{"name": input_name, "datatype": "FP32", "shape": [-1, features]}],
        "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, classes]}],
        "max_batch_size": 32,
        **overrides,
    }


def run_onnx(data: bytes, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The same graph run directly by onnxruntime in this process."""
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return list(session.run(None, inputs))


# -- pickle payloads: each creates ``marker`` when unpickled ------------------------------


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def torch_save_payload(marker: Path) -> bytes:
    """What ``torch.save`` writes (a zip holding data.pkl), carrying the payload."""
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "payload": _Payload(marker)}, buffer)
    return buffer.getvalue()


def raw_pickle_payload(marker: Path) -> bytes:
    """A plain pickle, as legacy ``pytorch_model.bin`` files and joblib dumps are."""
    return pickle.dumps({"weight": [0.0, 0.0], "payload": _Payload(marker)}, protocol=2)


def pt2_payload(marker: Path) -> bytes:
    """A real torch.export archive whose sample inputs are a hostile pickle: the
    restricted unpickler refuses it, and torch.export.load falls back to the
    unrestricted one, which runs it."""
    module = torch.nn.Linear(4, 2).eval()
    program = torch.export.export(module, (torch.randn(2, 4),))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    original = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as rewritten:
        for info in original.infolist():
            data = original.read(info.filename)
            if info.filename.endswith("sample_inputs/model.pt"):
                data = torch_save_payload(marker)
            rewritten.writestr(info, data)
    return out.getvalue()


def load_unsafely(kind: str, path: Path) -> None:
    """How each file would be opened by a server that trusts it (run in a subprocess
    by the tests, to prove the payloads are live)."""
    if kind == "pt2":
        torch.export.load(path)
    elif kind == "pickle":
        with path.open("rb") as f:
            pickle.load(f)
    else:
        torch.load(path, weights_only=False)


ALLOWED = CodePolicy(("custom_models",))


def load_model(directory: Path, policy: CodePolicy = ALLOWED) -> LoadedModel:
    """A model version loaded as a worker loads it (weights sized, loaded, warmed up)."""
    pager = ModelPager(policy)
    key = (directory.parent.name, directory.name)
    pager.weights_bytes(key, directory)
    model = pager.load(key, directory)
    pager.warm_up(key, model, None)
    return model
