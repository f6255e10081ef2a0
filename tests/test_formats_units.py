"""The user's own models, in process: pickle refusal, the code allow-list, the interface
check for every format, ONNX graphs, batching of custom and ONNX models."""

from __future__ import annotations

import ast
import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli.up import UpOptions
from protocol.errors import ModelUnavailable
from tests import formats_fixtures as ff
from tests.reference import infer_body
from worker.batcher import Batcher
from worker.codecs import JSON_CODEC
from worker.custom_code import CodePolicy, package_allowed, parse_allowed
from worker.errors import InvalidModelConfig
from worker.formats import ModelPager
from worker.model_config import ModelConfig
from worker.pickle_guard import RefusedFile, refuse_pickles
from worker.runner import LoadedModel
from worker.stats import BatchTimes

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = CodePolicy(("custom_models",))


@pytest.fixture(autouse=True)
def _custom_models_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ff.TESTS))


def _load(directory: Path, policy: CodePolicy = ALLOWED) -> LoadedModel:
    pager = ModelPager(policy)
    key = (directory.parent.name, directory.name)
    pager.weights_bytes(key, directory)
    model = pager.load(key, directory)
    pager.warm_up(key, model, None)
    return model


# -- pickles and archives -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "data"),
    [
        ("model.pt", b"anything"),  # by name: never read
        ("pytorch_model.bin", b"anything"),
        ("model.pt2", b"anything"),
        ("weights.ckpt", b"anything"),
        ("dump.joblib", b"anything"),
        ("array.npy", b"anything"),
        ("weights.data", b"\x80\x04\x95 a pickle by its first bytes"),
        ("weights.data", b"PK\x03\x04 a zip by its first bytes"),
        ("weights.data", b"\x93NUMPY by its first bytes"),
    ],
)
def test_a_version_carrying_a_pickle_or_archive_is_refused(tmp_path: Path, file: str, data: bytes) -> None:
    (tmp_path / "config.json").write_bytes(b"{}")
    (tmp_path / file).write_bytes(data)
    with pytest.raises(RefusedFile, match="never opened"):
        refuse_pickles(tmp_path, ("config.json",))


def test_nested_files_are_checked_and_the_parsed_files_are_not_sniffed(tmp_path: Path) -> None:
    # A safetensors header length can start with the bytes of a pickle marker: its own parser judges it.
    (tmp_path / "model.safetensors").write_bytes(b"\x80\x02" + bytes(6))
    (tmp_path / "README.md").write_text("my model")
    refuse_pickles(tmp_path, ("model.safetensors",))
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "model.pt").write_bytes(b"x")
    with pytest.raises(RefusedFile, match=r"model\.pt"):
        refuse_pickles(tmp_path, ("model.safetensors",))


def test_nothing_in_the_worker_calls_an_unpickler() -> None:
    """Static: no torch.load, torch.export.load, pickle, joblib or np.load anywhere in worker/."""
    banned = {("torch", "load"), ("export", "load"), ("pickle", "load"), ("pickle", "loads"), ("np", "load"),
              ("numpy", "load"), ("joblib", "load"), ("dill", "load")}  # fmt: skip
    found = []
    for path in (ROOT / "worker").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, (ast.Name, ast.Attribute)):
                owner = node.value.id if isinstance(node.value, ast.Name) else node.value.attr
                if (owner, node.attr) in banned:
                    found.append(f"{path.name}:{node.lineno} {owner}.{node.attr}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                found += [f"{path.name}: imports {n}" for n in names if n and n.split(".")[0] in ("pickle", "joblib")]
    assert not found


# -- the code allow-list ----------------------------------------------------------------------


@given(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), st.from_regex(r"[a-z0-9_]{1,8}", fullmatch=True))
def test_packages_match_by_whole_name(package: str, suffix: str) -> None:
    assert package_allowed(package, [package])
    assert package_allowed(f"{package}.models.nets", [package])
    assert not package_allowed(f"{package}{suffix}", [package])  # acme does not allow acme_evil
    assert not package_allowed(f"{package}{suffix}.models", [package])
    assert not package_allowed(package, [f"{package}.models"])  # allowing a subpackage allows not its parent


def test_allow_code_takes_package_names_only() -> None:
    assert parse_allowed("acme, beta.models,acme") == ("acme", "beta.models")
    for bad in ("../evil", "acme/models", "acme-models", "acme.", "1acme"):
        with pytest.raises(ValueError, match="not a Python package name"):
            parse_allowed(bad)


def test_code_not_allowed_is_refused_and_never_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "imported"
    monkeypatch.setenv("EVIL_IMPORT_MARKER", str(marker))
    with pytest.raises(ModelUnavailable, match=r"does not allow .*--allow-code"):
        ALLOWED.factory("m", "custom_models_evil:build")
    with pytest.raises(ModelUnavailable, match="does not allow"):
        CodePolicy().factory("m", "custom_models.nets:build")  # off by default
    assert "custom_models_evil" not in sys.modules and not marker.exists()


def test_code_inside_a_data_directory_is_refused_before_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    planted = repo / "planted_units"
    planted.mkdir(parents=True)
    marker = tmp_path / "ran"
    (planted / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef build(): pass\n")
    monkeypatch.syspath_prepend(str(repo))
    policy = CodePolicy(("planted_units",), (repo,))
    with pytest.raises(ModelUnavailable, match="inside a model repository"):
        policy.factory("m", "planted_units:build")
    assert not marker.exists() and "planted_units" not in sys.modules


def test_a_factory_must_exist_and_make_a_module() -> None:
    with pytest.raises(ModelUnavailable, match="has no factory 'nope'"):
        ALLOWED.factory("m", "custom_models.nets:nope")
    with pytest.raises(ModelUnavailable, match=r"no module named 'custom_models\.absent'"):
        ALLOWED.factory("m", "custom_models.absent:build")


def test_up_hands_allow_code_to_every_worker() -> None:
    options = UpOptions(allow_code=("acme", "beta"))
    assert options.memory_args(0)[-2:] == ["--allow-code", "acme,beta"]
    assert "--allow-code" not in UpOptions().memory_args(0)


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
    model = _load(path)
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
        _load(_mlp(tmp_path, "wrong", **changes))


def test_custom_code_loads_mapped_and_answers_as_run_directly(tmp_path: Path) -> None:
    path = ff.write_scorer(tmp_path, "scorer", seed=3)
    model = _load(path)
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
        _load(path)


def test_a_model_that_cannot_batch_is_caught(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from tests.custom_models.nets import build_unbatched

    config = {"architecture": "python:custom_models.nets:build_unbatched", "args": {"features": 4},
              "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
              "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}], "max_batch_size": 8}  # fmt: skip
    path = ff.write_version(tmp_path, "unbatched", config, {})
    save_file(dict(build_unbatched(4).state_dict()), str(path / "model.safetensors"))
    with pytest.raises(ModelUnavailable, match=r"output 'y' has shape \[1, 2\] for a batch of 2"):
        _load(path)


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
        _load(path)


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
    _load(path)  # the runtime's one-time set-up, not this model's
    gc.collect()
    before = in_use()
    model = pager.load(("digits", "1"), path)
    gc.collect()
    held = in_use() - before
    assert len(data) * 0.9 < held <= charged, (held, charged)
    del model
    assert not pager.device_capable(("digits", "1"), path)
    assert pager.device_capable(("x", "1"), _mlp(tmp_path, "x"))
    session = _load(path).module.session  # type: ignore[union-attr]
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
    onnx_model = _load(ff.write_version(tmp_path, "digits", ff.onnx_config(), {"model.onnx": data}))
    pixels = [rng.standard_normal((n, 8)).astype(np.float32) for n in (1, 3, 2)]
    rows, answers = _batched(onnx_model, [orjson.dumps(infer_body([("pixels", "FP32", p)])) for p in pixels])
    assert rows == [6]
    for p, answer in zip(pixels, answers, strict=True):
        [direct] = ff.run_onnx(data, {"pixels": p})
        np.testing.assert_allclose(np.array(answer["outputs"][0]["data"]).reshape(direct.shape), direct, rtol=1e-5)

    scorer_path = ff.write_scorer(tmp_path, "scorer", seed=4)
    scorer = _load(scorer_path)
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
    manager: MemoryManager[LoadedModel] = MemoryManager(config, ModelPager(ALLOWED), repository(tmp_path), device)
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
    model = _load(path)  # no forward at load, so the mismatch is not seen yet
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
