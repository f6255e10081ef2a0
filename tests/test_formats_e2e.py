"""The user's own models through real worker and balancer processes: custom code and
ONNX answer as the same models run directly (batching on); pickles in every form a
repository may carry are refused and never run; code not allowed, or inside the
repository, is refused unimported; an interface mismatch fails the load, naming it,
and the worker keeps serving the others."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests import formats_fixtures as ff
from tests.harness import Server, private_cluster, request
from tests.reference import infer_body
from worker.onnx_pager import held_bytes
from worker.zoo import make_model

PICKLES = {  # model -> (file it carries, how an unsafe server would open it)
    "pickled-pt": ("model.pt", "torch"),
    "pickled-bin": ("pytorch_model.bin", "pickle"),
    "pickled-pt2": ("model.pt2", "pt2"),
    "pickled-hidden": ("weights.data", "torch"),  # a torch.save zip under an innocent name
}
MISMATCHES = {  # model -> what the load error must say
    "wrong-shape": r"does not run on the inputs config.json declares \('input' FP32 \[-1, 5\]\)",
    "wrong-dtype": r"does not run on the inputs config.json declares \('input' INT64 \[-1, 8\]\)",
    "wrong-output": r"output 'logits' has shape \[2, 3\] for a batch of 2, config.json declares \[-1, 7\]",
    "wrong-onnx-name": r"input 'image' is not an input of the ONNX graph \(it takes 'pixels' FP32 \[-1, 8\]\)",
    "wrong-output-name": r"output 'logits' is not among the module's outputs \('score', 'embedding'\)",
}


@dataclass
class UserRepo:
    root: Path
    markers: Path
    onnx: bytes


def _mlp(root: Path, name: str, **changes: object) -> None:
    made = make_model(root, name, "mlp", {"in_features": 8, "hidden": [8], "out_features": 3}, seed=2)
    config = orjson.loads((made.path / "config.json").read_bytes())
    (made.path / "config.json").write_bytes(orjson.dumps({**config, **changes}))


@pytest.fixture(scope="module")
def user_repo(tmp_path_factory: pytest.TempPathFactory) -> UserRepo:
    root = tmp_path_factory.mktemp("user-repo")
    markers = tmp_path_factory.mktemp("markers")
    ff.write_scorer(root, "scorer", seed=11)
    data = ff.onnx_mlp(seed=12)
    ff.write_version(root, "digits", ff.onnx_config(), {"model.onnx": data})
    _mlp(root, "mlp-free", inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
         outputs=[{"name": "y", "datatype": "FP32", "shape": [-1, 3]}])  # fmt: skip
    # Pickles beside a valid config and valid safetensors weights: only the refusal stands in the way.
    payloads = {"torch": ff.torch_save_payload, "pickle": ff.raw_pickle_payload, "pt2": ff.pt2_payload}
    for name, (file, kind) in PICKLES.items():
        _mlp(root, name)
        (root / name / "1" / file).write_bytes(payloads[kind](markers / name))
    ff.write_scorer(root, "not-allowed", architecture="python:custom_models_evil:build")
    planted = root / "planted_code"  # a package inside the repository, on the worker's PYTHONPATH
    planted.mkdir()
    (planted / "__init__.py").write_text(f"open({str(markers / 'planted')!r}, 'w').close()\ndef build(**a): pass\n")
    ff.write_scorer(root, "in-repo", architecture="python:planted_code:build")
    _mlp(root, "wrong-shape", inputs=[{"name": "input", "datatype": "FP32", "shape": [-1, 5]}])
    _mlp(root, "wrong-dtype", inputs=[{"name": "input", "datatype": "INT64", "shape": [-1, 8]}])
    _mlp(root, "wrong-output", outputs=[{"name": "logits", "datatype": "FP32", "shape": [-1, 7]}])
    ff.write_version(root, "wrong-onnx-name", ff.onnx_config(input_name="image"), {"model.onnx": data})
    outputs = [{"name": "logits", "datatype": "FP32", "shape": [-1, 1]},
               {"name": "embedding", "datatype": "FP32", "shape": [-1, 8]}]  # fmt: skip
    ff.write_scorer(root, "wrong-output-name", outputs=outputs)
    return UserRepo(root, markers, data)


@pytest.fixture(scope="module")
def cluster(user_repo: UserRepo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Server], Server]]:
    env = {
        "PYTHONPATH": f"{ff.TESTS}:{user_repo.root}",
        "EVIL_IMPORT_MARKER": str(user_repo.markers / "evil-imported"),
    }
    logdir = tmp_path_factory.mktemp("format-logs")
    with private_cluster(
        user_repo.root, logdir, 2, "--policy", "consistent",
        worker_args=("--allow-code", "custom_models,planted_code", "--threads", "2"), worker_env=env,
    ) as started:  # fmt: skip
        yield started


def _infer(
    server: Server, model: str, inputs: list[tuple[str, str, np.ndarray]], fresh: bool = True
) -> tuple[int, dict, dict]:
    """One inference; ``fresh``: past the balancer's cache (Cache-Control: no-cache), so a worker answers."""
    headers = {"Cache-Control": "no-cache"} if fresh else {}
    resp = request(server.url, "POST", f"/v2/models/{model}/infer", infer_body(inputs), headers)
    return resp.status, resp.json(), resp.headers


def _outputs(body: dict) -> dict[str, np.ndarray]:
    return {o["name"]: np.array(o["data"], dtype=np.float32).reshape(o["shape"]) for o in body["outputs"]}


def _concurrently(server: Server, model: str, batches: list[list[tuple[str, str, np.ndarray]]]) -> list[dict]:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda inputs: _infer(server, model, inputs), batches))
    assert [status for status, _, _ in answers] == [200] * len(batches), answers[0][1]
    return [body for _, body, _ in answers]


def _worker_of(workers: list[Server], headers: dict) -> Server:
    return next(w for w in workers if w.id == headers["x-served-by"])


def test_custom_code_through_the_balancer_answers_as_the_model_run_directly(
    cluster: tuple[list[Server], Server], user_repo: UserRepo
) -> None:
    workers, balancer = cluster
    meta = request(balancer.url, "GET", "/v2/models/scorer").json()
    assert meta["platform"] == "pytorch_safetensors" and [t["name"] for t in meta["inputs"]] == ["query", "item_ids"]
    rng = np.random.default_rng(1)
    batches = [(rng.standard_normal((n, 6)).astype(np.float32), rng.integers(0, 50, (n, 4))) for n in [1, 3, 2] * 8]
    bodies = _concurrently(balancer, "scorer", [[("query", "FP32", q), ("item_ids", "INT64", i)] for q, i in batches])
    for (query, ids), body in zip(batches, bodies, strict=True):
        got, direct = _outputs(body), ff.run_scorer(user_repo.root / "scorer" / "1", query, ids)
        for name in ("score", "embedding"):
            np.testing.assert_allclose(got[name], direct[name], rtol=1e-4, atol=1e-6)
    _, _, headers = _infer(balancer, "scorer", [("query", "FP32", batches[0][0]), ("item_ids", "INT64", batches[0][1])])
    assert headers["x-model-source"] == "cpu"
    _assert_in_memory(_worker_of(workers, headers), "scorer", user_repo.root / "scorer" / "1" / "model.safetensors")


def test_onnx_through_the_balancer_answers_as_onnxruntime_run_directly(
    cluster: tuple[list[Server], Server], user_repo: UserRepo
) -> None:
    workers, balancer = cluster
    assert request(balancer.url, "GET", "/v2/models/digits").json()["platform"] == "onnxruntime_onnx"
    rng = np.random.default_rng(2)
    pixels = [rng.standard_normal((n, 8)).astype(np.float32) for n in [2, 1, 4] * 8]
    bodies = _concurrently(balancer, "digits", [[("pixels", "FP32", p)] for p in pixels])
    for p, body in zip(pixels, bodies, strict=True):
        [direct] = ff.run_onnx(user_repo.onnx, {"pixels": p})
        np.testing.assert_allclose(_outputs(body)["probs"], direct, rtol=1e-5, atol=1e-7)
    _, _, headers = _infer(balancer, "digits", [("pixels", "FP32", pixels[0])])
    assert headers["x-model-source"] == "cpu"
    _assert_in_memory(_worker_of(workers, headers), "digits", user_repo.root / "digits" / "1" / "model.onnx")


def _assert_in_memory(worker: Server, model: str, weights: Path) -> None:
    """/admin/memory lists the model in the CPU tier like any other, charged its bytes."""
    tiers = request(worker.url, "GET", "/admin/memory").json()["tiers"]
    [cpu] = [t for t in tiers if t["tier"] == "cpu"]
    [entry] = [m for m in cpu["models"] if m["name"] == model]
    size = weights.stat().st_size
    if weights.suffix == ".safetensors":  # the tensors' bytes: the file less its header
        assert 0 < entry["bytes"] < size
    else:  # what the session holds, charged from the file
        assert entry["bytes"] == held_bytes(size)
    metrics = request(worker.url, "GET", "/metrics").body.decode().splitlines()
    served = [line for line in metrics if line.startswith("affinity_requests_total{") and f'model="{model}"' in line]
    assert any('code="200"' in line and float(line.rsplit(" ", 1)[1]) > 0 for line in served)
    batches = [line for line in metrics if line.startswith("affinity_batch_size_count") and f'model="{model}"' in line]
    assert batches and float(batches[0].rsplit(" ", 1)[1]) > 0


def test_a_built_in_architecture_serves_under_its_config_names(cluster: tuple[list[Server], Server]) -> None:
    _, balancer = cluster
    status, body, _ = _infer(balancer, "mlp-free", [("x", "FP32", np.ones((2, 8), np.float32))])
    assert status == 200 and body["outputs"][0]["name"] == "y" and body["outputs"][0]["shape"] == [2, 3]


@pytest.mark.parametrize("model", sorted(PICKLES))
def test_a_pickle_in_any_form_is_refused_and_never_runs(
    cluster: tuple[list[Server], Server], user_repo: UserRepo, model: str
) -> None:
    workers, balancer = cluster
    file = PICKLES[model][0]
    status, body, _ = _infer(balancer, model, [("input", "FP32", np.ones((1, 8), np.float32))])
    assert status == 500 and f"'{file}'" in body["error"] and "never opened" in body["error"]
    for worker in workers:  # every worker says why in its index, and an explicit load is refused too
        [row] = [r for r in request(worker.url, "POST", "/v2/repository/index", {}).json() if r["name"] == model]
        assert row["state"] == "UNAVAILABLE" and file in row["reason"]
        assert request(worker.url, "POST", f"/v2/repository/models/{model}/load", {}).status == 500
    assert not (user_repo.markers / model).exists()


@pytest.mark.parametrize("model", sorted(PICKLES))
def test_the_pickle_payloads_are_live(user_repo: UserRepo, model: str, tmp_path: Path) -> None:
    """The control: each file really runs its payload when opened the way an unsafe server
    opens it (torch.load, pickle.load, torch.export.load), so the refusal above is what saved us."""
    file, kind = PICKLES[model]
    marker = tmp_path / "ran"
    payloads = {"torch": ff.torch_save_payload, "pickle": ff.raw_pickle_payload, "pt2": ff.pt2_payload}
    (tmp_path / file).write_bytes(payloads[kind](marker))
    code = "import sys; from pathlib import Path; from tests.formats_fixtures import load_unsafely; " \
           "load_unsafely(sys.argv[1], Path(sys.argv[2]))"  # fmt: skip
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-c", code, kind, str(tmp_path / file)]
    subprocess.run(command, check=False, cwd=root, capture_output=True, timeout=120)  # it may raise after running
    assert marker.exists()


def test_code_from_a_package_not_allowed_is_refused_unimported(
    cluster: tuple[list[Server], Server], user_repo: UserRepo
) -> None:
    _, balancer = cluster
    status, body, _ = _infer(balancer, "not-allowed", [("query", "FP32", np.ones((1, 6), np.float32)),
                                                       ("item_ids", "INT64", np.ones((1, 4), np.int64))])  # fmt: skip
    assert status == 500
    assert "names code in 'custom_models_evil', which this worker does not allow" in body["error"]
    assert "custom_models, planted_code" in body["error"] and "--allow-code" in body["error"]
    assert not (user_repo.markers / "evil-imported").exists()


def test_a_module_inside_the_repository_is_refused_unimported(
    cluster: tuple[list[Server], Server], user_repo: UserRepo
) -> None:
    _, balancer = cluster
    status, body, _ = _infer(balancer, "in-repo", [("query", "FP32", np.ones((1, 6), np.float32)),
                                                   ("item_ids", "INT64", np.ones((1, 4), np.int64))])  # fmt: skip
    assert status == 500 and "module 'planted_code' lies inside a model repository" in body["error"]
    assert not (user_repo.markers / "planted").exists()


@pytest.mark.parametrize("model", sorted(MISMATCHES))
def test_an_interface_mismatch_fails_the_load_naming_it_and_the_worker_serves_on(
    cluster: tuple[list[Server], Server], model: str
) -> None:
    import re

    workers, balancer = cluster
    meta = request(balancer.url, "GET", f"/v2/models/{model}").json()
    inputs = []
    for spec in meta["inputs"]:
        shape = [1 if d == -1 else d for d in spec["shape"]]
        dtype = np.int64 if spec["datatype"] == "INT64" else np.float32
        inputs.append((spec["name"], spec["datatype"], np.zeros(shape, dtype)))
    status, body, headers = _infer(balancer, model, inputs)
    assert status == 500 and re.search(MISMATCHES[model], body["error"]), body
    worker = _worker_of(workers, headers)
    [row] = [r for r in request(worker.url, "POST", "/v2/repository/index", {}).json() if r["name"] == model]
    assert row["state"] == "UNAVAILABLE" and re.search(MISMATCHES[model], row["reason"])
    assert request(worker.url, "GET", "/v2/health/ready").status == 200
    status, _, _ = _infer(worker, "mlp-free", [("x", "FP32", np.ones((1, 8), np.float32))])
    assert status == 200
