"""The user's own models, in process: the interface check for every format, ONNX graphs,
batching of custom and ONNX models (pickle refusal and the code allow-list:
tests/test_formats_safety.py)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import pytest

from protocol.errors import ModelUnavailable
from tests import formats_fixtures as ff
from tests.reference import infer_body
from worker.batcher import Batcher
from worker.codecs import JSON_CODEC
from worker.errors import InvalidModelConfig
from worker.formats import ModelPager
from worker.model_config import ModelConfig
from worker.runner import LoadedModel
from worker.stats import BatchTimes

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _custom_models_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ff.TESTS))


# -- config and interface -----------------------------------------------------------------------


def test_config_formats() -> None:
    onnx = ModelConfig.from_json(ff.onnx_config())
    assert onnx.format == "onnx" and onnx.weights_file == "model.onnx" and onnx.architecture == ""
    assert ModelConfig.from_json(onnx.to_json()) == onnx
    with pytest.raises(InvalidModelConfig, match="takes no 'architecture'"):
        ModelConfig.from_json({**ff.onnx_config(), "architecture": "mlp"})
    with pytest.raises(InvalidModelConfig, match="unknown format"):
        ModelConfig.from_json({**ff.onnx_config(), "format": "pickle"})
    with pytest.raises(InvalidModelConfig, match=r"package\.module:factory"):
        ModelConfig.from_json({**ff.onnx_config(), "format": "safetensors", "architecture": "python:../x:y"})


def _mlp(tmp_path: Path, name: str, **changes: object) -> Path:
    from worker.zoo import make_model

    made = make_model(tmp_path, name, "mlp", {"in_features": 8, "hidden": [8], "out_features": 3}, seed=1)
    config = orjson.loads((made.path / "config.json").read_bytes())
    (made.path / "config.json").write_bytes(orjson.dumps({**config, **changes}))
    return made.path


def test_a_built_in_architecture_takes_any_tensor_names(tmp_path: Path) -> None:
    path = _mlp(tmp_path, "free",
                inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
                outputs=[{"name": "y", "datatype": "FP32", "shape": [-1, 3]}])  # fmt: skip
    model = ff.load_model(path)
    assert [s.name for s in model.config.inputs] == ["x"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 5]}]}, r"not run on the inputs.*\[-1, 5\]"),
        ({"inputs": [{"name": "input", "datatype": "INT64", "shape": [-1, 8]}]}, r"does not run.*'input' INT64"),
        ({"outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 4]}]},
         r"output 'logits' has shape \[2, 3\] for a batch of 2, config.json declares \[-1, 4\]"),
        ({"outputs": [{"name": "logits", "datatype": "FP64", "shape": [-1, 3]}]},
         "output 'logits' is FP32, config.json declares FP64"),
        ({"outputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 3]},
                      {"name": "b", "datatype": "FP32", "shape": [-1, 3]}]},
         r"returns 1 output\(s\), config.json declares 2 \(a, b\)"),
    ],
)  # fmt: skip
def test_an_interface_mismatch_fails_the_load_naming_it(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(ModelUnavailable, match=message):
        ff.load_model(_mlp(tmp_path, "wrong", **changes))


def test_custom_code_loads_mapped_and_answers_as_run_directly(tmp_path: Path) -> None:
    path = ff.write_scorer(tmp_path, "scorer", seed=3)
    model = ff.load_model(path)
    module = model.module
    assert isinstance(module, __import__("torch").nn.Module)
    assert module.query[0].weight.untyped_storage().nbytes() > 0  # attached, not meta
    assert not module.scale.is_meta  # the unsaved buffer came from an ordinary build
    rng = np.random.default_rng(0)
    query, ids = rng.standard_normal((3, 6)).astype(np.float32), rng.integers(0, 50, (3, 4))
    from worker.paging import run_on

    score, embedding = run_on(model, [query, ids], None)
    direct = ff.run_scorer(path, query, ids)
    np.testing.assert_allclose(score, direct["score"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embedding, direct["embedding"], rtol=1e-5, atol=1e-6)


def test_a_custom_output_name_the_module_does_not_return_is_named(tmp_path: Path) -> None:
    outputs = [{"name": "logits", "datatype": "FP32", "shape": [-1, 1]},
               {"name": "embedding", "datatype": "FP32", "shape": [-1, 8]}]  # fmt: skip
    path = ff.write_scorer(tmp_path, "renamed", outputs=outputs)
    with pytest.raises(ModelUnavailable, match=r"output 'logits' is not among the module's outputs \('score'"):
        ff.load_model(path)


def test_a_model_that_cannot_batch_is_caught(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from tests.custom_models.nets import build_unbatched

    config = {"architecture": "python:custom_models.nets:build_unbatched", "args": {"features": 4},
              "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
              "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}], "max_batch_size": 8}  # fmt: skip
    path = ff.write_version(tmp_path, "unbatched", config, {})
    save_file(dict(build_unbatched(4).state_dict()), str(path / "model.safetensors"))
    with pytest.raises(ModelUnavailable, match=r"output 'y' has shape \[1, 2\] for a batch of 2"):
        ff.load_model(path)


# -- ONNX -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("graph", "config", "message"),
    [
        ({}, {"input_name": "image"}, r"input 'image' is not an input of the ONNX graph \(it takes 'pixels' FP32"),
        ({}, {"features": 9}, r"input 'pixels' is declared \[-1, 9\], the graph takes \[-1, 8\]"),
        ({}, {"outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}]},
         r"output 'scores' is not an output of the ONNX graph \('probs'\)"),
        ({}, {"inputs": [{"name": "pixels", "datatype": "FP64", "shape": [-1, 8]}]},
         "input 'pixels' is declared FP64, the graph takes FP32"),
        ({}, {"outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, 4]}]},
         r"output 'probs' has shape \[2, 3\] for a batch of 2"),
    ],
)  # fmt: skip
def test_an_onnx_interface_mismatch_is_named(tmp_path: Path, graph: dict, config: dict, message: str) -> None:
    overrides = {k: v for k, v in config.items() if k in ("inputs", "outputs")}
    shape = {k: v for k, v in config.items() if k in ("input_name", "features")}
    path = ff.write_version(
        tmp_path, "digits", ff.onnx_config(**shape, **overrides), {"model.onnx": ff.onnx_mlp(**graph)}
    )
    with pytest.raises(ModelUnavailable, match=message):
        ff.load_model(path)


def test_an_onnx_model_is_charged_what_its_session_holds_and_serves_from_the_cpu_tier(tmp_path: Path) -> None:
    """The charge, known before loading, covers the memory the session then holds (malloc's own
    count of bytes in use, around a session made after a first one paid the runtime's set-up)."""
    import ctypes
    import gc

    from worker.onnx_pager import held_bytes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]  # fmt: skip

    mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    mallinfo2.restype = MallInfo2

    def in_use() -> int:
        info = mallinfo2()
        return int(info.uordblks + info.hblkhd)

    data = ff.onnx_mlp(features=64, hidden=8192, classes=10)  # ~2.4 MiB of weights
    path = ff.write_version(tmp_path, "digits", ff.onnx_config(features=64, classes=10), {"model.onnx": data})
    pager = ModelPager()
    charged = pager.weights_bytes(("digits", "1"), path)
    assert charged == held_bytes(len(data))
    ff.load_model(path)  # the runtime's one-time set-up, not this model's
    gc.collect()
    before = in_use()
    model = pager.load(("digits", "1"), path)
    gc.collect()
    held = in_use() - before
    assert len(data) * 0.9 < held <= charged, (held, charged)
    del model
    assert not pager.device_capable(("digits", "1"), path)
    assert pager.device_capable(("x", "1"), _mlp(tmp_path, "x"))
    session = ff.load_model(path).module.session  # type: ignore[union-attr]
    options = session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads, options.enable_cpu_mem_arena) == (1, 1, False)


def _batched(model: LoadedModel, bodies: list[bytes]) -> tuple[list[int], list[dict]]:
    """Submit every body while the pool is held, so the batcher finds them all queued."""
    import threading

    gate, rows = threading.Event(), []
    pool = ThreadPoolExecutor(1)
    pool.submit(gate.wait, 30)

    def on_batch(_: LoadedModel, times: BatchTimes) -> None:
        rows.extend(times.rows)

    async def main() -> list[bytes]:
        batcher = Batcher(pool, asyncio.get_running_loop(), 1 << 20, on_batch)
        futures = [batcher.submit(model, body, JSON_CODEC) for body in bodies]
        gate.set()
        return list(await asyncio.gather(*futures))

    try:
        answers = asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        pool.shutdown()
    return rows, [orjson.loads(a) for a in answers]


def test_queued_requests_for_custom_and_onnx_models_run_as_one_forward(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    data = ff.onnx_mlp(seed=5)
    onnx_model = ff.load_model(ff.write_version(tmp_path, "digits", ff.onnx_config(), {"model.onnx": data}))
    pixels = [rng.standard_normal((n, 8)).astype(np.float32) for n in (1, 3, 2)]
    rows, answers = _batched(onnx_model, [orjson.dumps(infer_body([("pixels", "FP32", p)])) for p in pixels])
    assert rows == [6]
    for p, answer in zip(pixels, answers, strict=True):
        [direct] = ff.run_onnx(data, {"pixels": p})
        np.testing.assert_allclose(np.array(answer["outputs"][0]["data"]).reshape(direct.shape), direct, rtol=1e-5)

    scorer_path = ff.write_scorer(tmp_path, "scorer", seed=4)
    scorer = ff.load_model(scorer_path)
    batches = [(rng.standard_normal((n, 6)).astype(np.float32), rng.integers(0, 50, (n, 4))) for n in (2, 1, 3)]
    bodies = [orjson.dumps(infer_body([("query", "FP32", q), ("item_ids", "INT64", i)])) for q, i in batches]
    rows, answers = _batched(scorer, bodies)
    assert rows == [6]
    for (q, i), answer in zip(batches, answers, strict=True):
        direct = ff.run_scorer(scorer_path, q, i)
        got = {o["name"]: np.array(o["data"], dtype=np.float32).reshape(o["shape"]) for o in answer["outputs"]}
        for name in ("score", "embedding"):
            np.testing.assert_allclose(got[name], direct[name], rtol=1e-4, atol=1e-6)


def test_a_remote_store_lists_onnx_by_its_weights_and_refuses_pickles_by_name(tmp_path: Path) -> None:
    """From the store's manifests alone: an ONNX version's identity is its model.onnx's sha256;
    a version whose manifest names a pickle is UNAVAILABLE and nothing of it is downloaded."""
    from worker.catalog import Catalog
    from worker.manifest import write_manifest
    from worker.remote_store import DirectoryStore

    store = tmp_path / "store"
    data = ff.onnx_mlp()
    write_manifest(ff.write_version(store, "digits", ff.onnx_config(), {"model.onnx": data}))
    write_manifest(ff.write_version(store, "evil", ff.onnx_config(), {"model.onnx": data, "extra.pt": b"x"}))
    catalog = Catalog(None, DirectoryStore(store))
    view = catalog.scan()
    digits, evil = view.get(("digits", "1")), view.get(("evil", "1"))
    assert digits is not None and digits.config is not None and digits.config.format == "onnx"
    assert digits.sha256 == __import__("hashlib").sha256(data).hexdigest() and digits.size_bytes == len(data)
    assert evil is not None and evil.config is None and "'extra.pt' is a .pt file" in evil.problem


def test_with_a_device_custom_code_moves_to_it_and_onnx_stays_in_the_cpu_tier(tmp_path: Path) -> None:
    """Both formats through one memory manager with a GPU tier (the stand-in device): the custom
    module is copied to the device and answers as on the host; the ONNX model is placed in the
    CPU tier, and a second acquire does not try to promote it."""
    from tests.memory_fixtures import repository, run
    from worker.device import StandInDevice
    from worker.memory import MemoryConfig, MemoryManager
    from worker.paging import run_on

    ff.write_scorer(tmp_path, "scorer", seed=9)
    data = ff.onnx_mlp(seed=9)
    ff.write_version(tmp_path, "digits", ff.onnx_config(), {"model.onnx": data})
    device = StandInDevice()
    config = MemoryConfig(cpu_budget=64 << 20, gpu_budget=64 << 20, wait_timeout=5)
    manager: MemoryManager[LoadedModel] = MemoryManager(config, ModelPager(ff.ALLOWED), repository(tmp_path), device)
    rng = np.random.default_rng(4)
    query, ids = rng.standard_normal((3, 6)).astype(np.float32), rng.integers(0, 50, (3, 4))
    pixels = rng.standard_normal((2, 8)).astype(np.float32)

    async def main() -> None:
        try:
            with await manager.acquire(("scorer", "1")) as lease:
                assert lease.tier == "gpu" and lease.device is device
                score, _ = run_on(lease.model, [query, ids], lease.device)
            np.testing.assert_allclose(score, ff.run_scorer(tmp_path / "scorer" / "1", query, ids)["score"], rtol=1e-5)
            for _ in range(2):
                with await manager.acquire(("digits", "1")) as lease:
                    assert lease.tier == "cpu" and lease.device is None
                    [probs] = run_on(lease.model, [pixels], None)
            np.testing.assert_allclose(probs, ff.run_onnx(data, {"pixels": pixels})[0], rtol=1e-5)
            assert manager.residency(("digits", "1")) == "cpu"
            again = manager.try_acquire(("digits", "1"))  # served where it is: no promotion wanted
            assert again is not None
            again.release()
        finally:
            await manager.close()

    run(main)


def test_without_a_warm_up_each_batch_is_checked_and_its_callers_told_why(tmp_path: Path) -> None:
    path = _mlp(tmp_path, "lazy", warmup=False, outputs=[{"name": "logits", "datatype": "FP32", "shape": [-1, 7]}])
    model = ff.load_model(path)  # no forward at load, so the mismatch is not seen yet
    pool = ThreadPoolExecutor(1)

    async def main() -> list[object]:
        batcher = Batcher(pool, asyncio.get_running_loop(), 1 << 20)
        body = orjson.dumps(infer_body([("input", "FP32", np.ones((2, 8), np.float32))]))
        return list(await asyncio.gather(batcher.submit(model, body, JSON_CODEC), return_exceptions=True))

    try:
        [answer] = asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        pool.shutdown()
    assert isinstance(answer, ModelUnavailable)
    assert "output 'logits' has shape [2, 3] for a batch of 2, config.json declares [-1, 7]" in answer.message
