"""``affinity models add|list|remove`` as an operator runs them: real commands, a real
worker serving what they wrote, refusals that leave nothing behind, and ``--from-pt2``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from safetensors.torch import save_file

from tests import formats_fixtures as ff
from tests.harness import request, start_worker, wait_until
from tests.reference import infer_body
from worker.manifest import Manifest, hash_file

ROOT = Path(__file__).resolve().parent.parent
SCORER_IO = ["--input", "query:FP32:-1,6", "--input", "item_ids:INT64:-1,4",
             "--output", "score:FP32:-1,1", "--output", "embedding:FP32:-1,8"]  # fmt: skip


def affinity(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFFINITY_")}
    env["PYTHONPATH"] = str(ff.TESTS)
    done = subprocess.run(
        [sys.executable, "-m", "cli", *map(str, args)], check=False, cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=240,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, done.stderr
    return done


def _listing(repo: Path) -> dict[str, dict]:
    lines = affinity("models", "list", "--models", repo, "--json").stdout.splitlines()
    return {row["name"]: row for row in map(orjson.loads, lines)}


def test_add_list_serve_remove(tmp_path: Path, logdir: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    save_file(ff.scorer_state(21), str(tmp_path / "scorer.safetensors"))
    (tmp_path / "digits.onnx").write_bytes(ff.onnx_mlp(seed=22))
    args = orjson.dumps(ff.SCORER_ARGS).decode()
    out = affinity("models", "add", "scorer", "--models", repo, "--weights", tmp_path / "scorer.safetensors",
                   "--architecture", ff.SCORER, "--args", args, *SCORER_IO).stdout  # fmt: skip
    assert "added model 'scorer' version 1" in out and "--allow-code custom_models" in out
    affinity("models", "add", "digits", "--models", repo, "--onnx", tmp_path / "digits.onnx", "--no-cache")
    affinity("models", "add", "digits", "--models", repo, "--onnx", tmp_path / "digits.onnx")  # version 2

    rows = _listing(repo)
    assert rows["scorer"]["format"] == "safetensors" and rows["scorer"]["architecture"] == ff.SCORER
    assert [t["name"] for t in rows["scorer"]["inputs"]] == ["query", "item_ids"]
    assert rows["digits"]["format"] == "onnx" and rows["digits"]["version"] == "2"  # the latest listed last
    assert rows["digits"]["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 8]}]  # from the graph
    assert rows["digits"]["size"] == (tmp_path / "digits.onnx").stat().st_size
    table = affinity("models", "list", "--models", repo).stdout
    assert "scorer" in table and "onnx" in table and "pixels:FP32[-1, 8] -> probs:FP32[-1, 3]" in table
    config = orjson.loads((repo / "digits" / "1" / "config.json").read_bytes())
    assert config["cache"] is False and config["max_batch_size"] == 64 and "architecture" not in config
    manifest = Manifest.from_bytes((repo / "scorer" / "1" / "manifest.json").read_bytes())
    for file in ("config.json", "model.safetensors"):
        assert manifest.files[file] == hash_file(repo / "scorer" / "1" / file)

    worker = start_worker(repo, logdir, "--allow-code", "custom_models", "--rescan-interval", "0.5",
                          env={"PYTHONPATH": str(ff.TESTS)}).wait_ready()  # fmt: skip
    try:
        rng = np.random.default_rng(3)
        query, ids = rng.standard_normal((2, 6)).astype(np.float32), rng.integers(0, 50, (2, 4))
        body = infer_body([("query", "FP32", query), ("item_ids", "INT64", ids)])
        answer = request(worker.url, "POST", "/v2/models/scorer/infer", body).json()
        direct = ff.run_scorer(repo / "scorer" / "1", query, ids)
        score = np.array(answer["outputs"][0]["data"], dtype=np.float32).reshape(2, 1)
        np.testing.assert_allclose(score, direct["score"], rtol=1e-4, atol=1e-6)
        pixels = rng.standard_normal((3, 8)).astype(np.float32)
        answer = request(worker.url, "POST", "/v2/models/digits/infer", infer_body([("pixels", "FP32", pixels)]))
        assert answer.status == 200 and answer.json()["model_version"] == "2"

        out = affinity("models", "remove", "scorer", "--models", repo).stdout
        assert "removed model 'scorer' version(s) 1" in out and not (repo / "scorer").exists()
        affinity("models", "remove", "digits", "--models", repo, "--version", "1")
        assert set(_listing(repo)) == {"digits"} and _listing(repo)["digits"]["version"] == "2"

        def gone() -> bool:  # one rescan may fall between the two removals: wait for both
            scorer = request(worker.url, "POST", "/v2/models/scorer/infer", body).status
            return scorer == 404 and request(worker.url, "GET", "/v2/models/digits/versions/1").status == 404

        wait_until(gone, timeout=30, interval=0.2)  # the worker's rescan drops them
        assert request(worker.url, "GET", "/v2/models/digits/versions/2").status == 200
    finally:
        worker.proc.stop()


def test_add_refuses_what_would_not_load_and_leaves_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    save_file(ff.scorer_state(0), str(tmp_path / "scorer.safetensors"))
    args = orjson.dumps(ff.SCORER_ARGS).decode()
    wrong = [a.replace("-1,6", "-1,7") for a in SCORER_IO]
    done = affinity("models", "add", "scorer", "--models", repo, "--weights", tmp_path / "scorer.safetensors",
                    "--architecture", ff.SCORER, "--args", args, *wrong, check=False)  # fmt: skip
    assert done.returncode == 1
    assert "refused: the model does not run on the inputs config.json declares ('query' FP32 [-1, 7]" in done.stderr
    assert list(repo.iterdir()) == []  # no model directory, no staging left behind

    (tmp_path / "digits.onnx").write_bytes(ff.onnx_mlp())
    done = affinity("models", "add", "digits", "--models", repo, "--onnx", tmp_path / "digits.onnx",
                    "--input", "image:FP32:-1,8", "--output", "probs:FP32:-1,3", check=False)  # fmt: skip
    assert done.returncode == 1 and "input 'image' is not an input of the ONNX graph" in done.stderr
    affinity("models", "add", "digits", "--models", repo, "--onnx", tmp_path / "digits.onnx", "--version", "3")
    done = affinity("models", "add", "digits", "--models", repo, "--onnx", tmp_path / "digits.onnx",
                    "--version", "3", check=False)  # fmt: skip
    assert done.returncode == 1 and "version 3 exists already" in done.stderr
    done = affinity("models", "add", "digits", "--models", repo, "--onnx", tmp_path / "digits.onnx",
                    "--quantize", "int8", check=False)  # fmt: skip
    assert done.returncode == 1 and "quantize applies to safetensors models" in done.stderr
    assert sorted(p.name for p in (repo / "digits").iterdir()) == ["3"]


@pytest.mark.parametrize("file", ["evil.pt", "evil.bin", "evil.safetensors", "evil.onnx"])
def test_add_never_opens_a_pickle(tmp_path: Path, file: str) -> None:
    marker = tmp_path / "ran"
    (tmp_path / file).write_bytes(ff.torch_save_payload(marker))
    source = ["--onnx", tmp_path / file] if file.endswith(".onnx") else ["--weights", tmp_path / file]
    done = affinity("models", "add", "evil", "--models", tmp_path, *source, "--architecture", "mlp",
                    "--args", '{"in_features": 2, "hidden": [], "out_features": 2}', check=False)  # fmt: skip
    assert done.returncode == 1 and "refused" in done.stderr and "pickle" in done.stderr
    assert not marker.exists() and not (tmp_path / "evil").exists()


def test_from_pt2_converts_a_trusted_archive_to_onnx_and_to_safetensors(tmp_path: Path) -> None:
    from tests.custom_models.nets import build_mlp
    from worker.custom_code import CodePolicy
    from worker.formats import ModelPager
    from worker.paging import run_on

    assert "your own risk" in affinity("models", "add", "--help").stdout.replace("\n", " ").replace("  ", " ")
    torch.manual_seed(5)
    module = build_mlp(4, 16, 3).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(module, (torch.randn(2, 4),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "mlp.pt2")
    repo = tmp_path / "repo"
    repo.mkdir()
    affinity("models", "add", "mlp-onnx", "--models", repo, "--from-pt2", tmp_path / "mlp.pt2", "--format", "onnx",
             "--input", "features:FP32:-1,4", "--output", "scores:FP32:-1,3")  # fmt: skip
    affinity("models", "add", "mlp-code", "--models", repo, "--from-pt2", tmp_path / "mlp.pt2",
             "--format", "safetensors", "--architecture", "python:custom_models.nets:build_mlp",
             "--args", '{"features": 4, "hidden": 16, "classes": 3}')  # fmt: skip
    rows = _listing(repo)
    assert rows["mlp-onnx"]["format"] == "onnx" and rows["mlp-code"]["format"] == "safetensors"
    assert [t["name"] for t in rows["mlp-code"]["inputs"]] == ["input"]  # as the exported forward names it
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    pager = ModelPager(CodePolicy(("custom_models",)))
    sys.path.insert(0, str(ff.TESTS))
    try:
        for name in ("mlp-onnx", "mlp-code"):
            model = pager.load((name, "1"), repo / name / "1")
            [got] = run_on(model, [x], None)
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    finally:
        sys.path.remove(str(ff.TESTS))
