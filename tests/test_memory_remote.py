"""The remote tier and the disk cache: a real S3-compatible server on loopback
(moto's standalone server) and a directory store. Downloads are verified
against the manifest before they become visible; a corrupted one is rejected
and never loaded; the disk cache keeps its budget by deleting what is not in use."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protocol.errors import ModelTooLarge, ModelUnavailable, NotFound, Overloaded
from tests.harness import moto_s3
from tests.memory_fixtures import CountingPager, repository, run
from tests.reference import run_reference, sample_inputs
from worker.disk_cache import DiskCache
from worker.eviction import make_policy
from worker.manifest import MANIFEST_FILE, Manifest, write_manifest
from worker.memory import MemoryConfig, MemoryManager
from worker.paging import run_on
from worker.remote_store import DirectoryStore, RemoteStore, S3Store, open_store
from worker.runner import LoadedModel

BUCKET = "models"
MODELS = ("mlp-00", "cnn-01", "transformer-02")


@pytest.fixture(scope="module")
def published(zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of three zoo models, each with its manifest.json (the layout a store holds)."""
    root = tmp_path_factory.mktemp("published")
    for name in MODELS:
        shutil.copytree(zoo / name, root / name)
        write_manifest(root / name / "1")
    return root


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3() as url:
        yield url


@pytest.fixture
def s3(s3_endpoint: str, published: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh bucket on the loopback server holding the published models under a prefix;
    credentials come from boto3's usual environment, as in production."""
    import boto3

    for var, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    for path in sorted(published.rglob("*.*")):
        client.upload_file(str(path), BUCKET, f"zoo/{path.relative_to(published)}")
    yield client
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)
    client.close()


def _manager(store: RemoteStore, cache_dir: Path, disk_budget: int, pager: CountingPager) -> MemoryManager[LoadedModel]:
    cache = DiskCache(cache_dir, disk_budget, store, make_policy("lru"))
    cache.scan()
    config = MemoryConfig(cpu_budget=64 << 20, wait_timeout=5)
    return MemoryManager(config, pager, lambda key: None, disk_cache=cache)


def _cached(cache_dir: Path) -> list[str]:
    """Every directory under the cache root (staging leftovers would show here)."""
    return sorted(str(p.relative_to(cache_dir)) for p in cache_dir.glob("*/*")) + sorted(
        p.name for p in cache_dir.iterdir() if p.name.startswith(".")
    )


def test_s3_store_lists_and_serves_a_model_downloaded_into_the_disk_cache(
    s3: Any, s3_endpoint: str, zoo: Path, tmp_path: Path
) -> None:
    store = open_store(f"s3://{BUCKET}/zoo", endpoint_url=s3_endpoint)
    assert isinstance(store, S3Store)
    assert store.list_versions() == {name: ["1"] for name in MODELS}
    pager = CountingPager()

    async def main() -> None:
        manager = _manager(store, tmp_path / "cache", 8 << 20, pager)
        assert manager.disk_cache is not None
        assert await manager.disk_cache.list_remote() == {name: ["1"] for name in MODELS}
        lease = await manager.acquire(("mlp-00", "1"))
        assert lease.source == "remote"
        inputs = [a for _, _, a in sample_inputs(zoo, "mlp-00", 2, seed=3)]
        got = run_on(lease.model, inputs, None)
        np.testing.assert_allclose(got[0], run_reference(zoo, "mlp-00", inputs)[0], rtol=1e-5, atol=1e-6)
        lease.release()
        assert _cached(tmp_path / "cache") == ["mlp-00/1"]
        for file in ("model.safetensors", "config.json"):
            assert (tmp_path / "cache/mlp-00/1" / file).read_bytes() == (zoo / "mlp-00/1" / file).read_bytes()
        disk = manager.snapshot().tier("disk")
        assert disk is not None and [m.name for m in disk.models] == ["mlp-00"]
        assert manager.snapshot().remote == f"s3://{BUCKET}/zoo"
        # Out of memory, the model is on local disk now: no second download.
        await manager.unload(("mlp-00", "1"))
        s3.delete_object(Bucket=BUCKET, Key="zoo/mlp-00/1/model.safetensors")
        lease = await manager.acquire(("mlp-00", "1"))
        assert lease.source == "disk" and pager.loads[("mlp-00", "1")] == 2
        lease.release()
        await manager.close()

    run(main)


@pytest.mark.parametrize("damage", ["flipped", "truncated", "extended"])
def test_a_corrupted_s3_download_is_rejected_and_never_loaded(
    s3: Any, s3_endpoint: str, published: Path, tmp_path: Path, damage: str
) -> None:
    data = bytearray((published / "cnn-01/1/model.safetensors").read_bytes())
    if damage == "flipped":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncated":
        del data[-100:]
    else:
        data += b"\0" * 100
    s3.put_object(Bucket=BUCKET, Key="zoo/cnn-01/1/model.safetensors", Body=bytes(data))
    store = open_store(f"s3://{BUCKET}/zoo", endpoint_url=s3_endpoint)
    pager = CountingPager()
    expected = {"flipped": "sha256", "truncated": "shorter", "extended": "larger"}[damage]

    async def main() -> None:
        manager = _manager(store, tmp_path / "cache", 8 << 20, pager)
        with pytest.raises(ModelUnavailable, match=expected) as caught:
            await manager.acquire(("cnn-01", "1"))
        assert caught.value.status == 500
        assert not pager.loads
        assert _cached(tmp_path / "cache") == []
        snap = manager.snapshot()
        assert all(t.used == 0 and t.reserved == 0 and not t.models for t in snap.tiers)
        # The manager stays consistent: other models still come down and load.
        (await manager.acquire(("mlp-00", "1"))).release()
        with pytest.raises(NotFound):  # the store answers that it has no such model
            await manager.acquire(("no-such-model", "1"))
        await manager.close()

    run(main)


def test_directory_store_and_a_disk_cache_that_keeps_its_budget(published: Path, tmp_path: Path) -> None:
    store = open_store(published.as_uri())
    assert isinstance(store, DirectoryStore)
    assert store.list_versions() == {name: ["1"] for name in MODELS}
    sizes = {
        name: Manifest.from_bytes((published / name / "1" / MANIFEST_FILE).read_bytes()).total_bytes for name in MODELS
    }
    budget = sizes["mlp-00"] + sizes["cnn-01"] + sizes["transformer-02"] - 1  # two of the three fit
    cache_dir = tmp_path / "cache"
    pager = CountingPager()
    mlp, cnn, transformer = ((name, "1") for name in MODELS)

    async def main() -> None:
        manager = _manager(store, cache_dir, budget, pager)
        held = await manager.acquire(mlp)
        (await manager.acquire(cnn)).release()
        await manager.unload(cnn)  # cnn is on disk only now: the one that may be deleted
        (await manager.acquire(transformer)).release()
        assert _cached(cache_dir) == ["mlp-00/1", "transformer-02/1"]  # mlp stayed: it is in use
        disk = manager.snapshot().tier("disk")
        assert disk is not None and disk.used <= budget
        # Everything left on disk is resident in memory; transformer is idle there, so it
        # leaves memory and then the disk to make room, and the leased mlp stays.
        cnn_lease = await manager.acquire(cnn)
        assert cnn_lease.source == "remote"
        assert _cached(cache_dir) == ["cnn-01/1", "mlp-00/1"]
        assert manager.residency(transformer) is None and manager.residency(mlp) == "cpu"
        # Both files now serve leased models: no room, nothing deleted, until a release.
        with pytest.raises(Overloaded):
            await manager.acquire(transformer, max_wait=0.2)
        assert _cached(cache_dir) == ["cnn-01/1", "mlp-00/1"]
        waiting = asyncio.create_task(manager.acquire(transformer, max_wait=10))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        cnn_lease.release()
        (await waiting).release()
        assert _cached(cache_dir) == ["mlp-00/1", "transformer-02/1"]
        assert manager.residency(mlp) == "cpu" and manager.residency(cnn) is None
        disk = manager.snapshot().tier("disk")
        assert disk is not None and disk.used <= budget
        held.release()
        await manager.close()

    run(main)


def test_disk_cache_rejects_a_model_larger_than_its_budget(published: Path, tmp_path: Path) -> None:
    async def main() -> None:
        manager = _manager(DirectoryStore(published), tmp_path / "cache", 1000, CountingPager())
        with pytest.raises(ModelTooLarge, match="disk cache"):
            await manager.acquire(("mlp-00", "1"))
        await manager.close()

    run(main)


def test_disk_cache_scan_keeps_complete_entries_only(published: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    shutil.copytree(published / "mlp-00", cache_dir / "mlp-00")  # complete, from an earlier run
    shutil.copytree(published / "cnn-01", cache_dir / "cnn-01")
    (cache_dir / "cnn-01/1/model.safetensors").write_bytes(b"short")  # not what its manifest says
    shutil.copytree(published / "transformer-02", cache_dir / "transformer-02")
    (cache_dir / "transformer-02/1" / MANIFEST_FILE).unlink()  # never finished
    (cache_dir / ".staging-0123").mkdir()  # an interrupted download
    cache = DiskCache(cache_dir, 64 << 20, DirectoryStore(published), make_policy("gds"))
    cache.scan()
    assert _cached(cache_dir) == ["mlp-00/1"]
    assert cache.path(("mlp-00", "1")) == cache_dir / "mlp-00/1"
    assert ("cnn-01", "1") not in cache

    async def close() -> None:
        await cache.close()

    run(close)


def test_store_urls() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        open_store("http://example.com/models")
    with pytest.raises(ValueError, match="bucket"):
        open_store("s3:///prefix")
    with pytest.raises(ValueError, match="absolute path"):
        open_store("file://relative/dir")


def test_concurrent_requests_for_a_remote_model_download_it_once(published: Path, tmp_path: Path) -> None:
    pager = CountingPager()
    store = DirectoryStore(published)
    opened: list[tuple[str, str]] = []
    real_open = store.open_file

    def counting_open(key: tuple[str, str], file: str) -> Any:
        opened.append((key[0], file))
        return real_open(key, file)

    store.open_file = counting_open  # type: ignore[method-assign]

    async def main() -> None:
        manager = _manager(store, tmp_path / "cache", 8 << 20, pager)
        leases = await asyncio.gather(*(manager.acquire(("cnn-01", "1")) for _ in range(20)))
        assert {lease.source for lease in leases} == {"remote"}
        assert sorted(opened) == [("cnn-01", f) for f in ("config.json", "manifest.json", "model.safetensors")]
        assert pager.loads[("cnn-01", "1")] == 1
        for lease in leases:
            lease.release()
        await manager.close()

    run(main)
    assert repository(tmp_path / "cache")(("cnn-01", "1")) is not None


@pytest.mark.parametrize("kind", ["s3", "file"])
def test_a_worker_with_a_remote_store_alone_lists_and_serves_its_models(
    kind: str, request: pytest.FixtureRequest, published: Path, zoo: Path, logdir: Path, tmp_path: Path
) -> None:
    """No --models at all: the store's models are in the index, the first request
    downloads one into the disk cache (X-Model-Source: remote), and a model
    published while the worker runs is found by an explicit load."""
    from tests.harness import request as http
    from tests.harness import start_worker
    from tests.metrics_text import metric_sum
    from tests.reference import infer_body

    if kind == "s3":
        client = request.getfixturevalue("s3")
        endpoint = request.getfixturevalue("s3_endpoint")
        store_args: tuple[str, ...] = ("--remote-store", f"s3://{BUCKET}/zoo", "--remote-endpoint", endpoint)
    else:
        store = tmp_path / "store"
        shutil.copytree(published, store, ignore=shutil.ignore_patterns("transformer-02"))
        store_args = ("--remote-store", store.as_uri())
    cache = tmp_path / "cache"
    worker = start_worker(None, logdir, *store_args, "--disk-cache-dir", str(cache), "--disk-cache", "8MiB")
    worker.wait_ready()
    try:
        rows = {r["name"]: r for r in http(worker.url, "POST", "/v2/repository/index", b"{}").json()}
        expected = set(MODELS) if kind == "s3" else {"mlp-00", "cnn-01"}
        assert set(rows) == expected
        weights_sha = Manifest.from_bytes((published / "mlp-00/1" / MANIFEST_FILE).read_bytes())
        assert rows["mlp-00"]["sha256"] == weights_sha.files["model.safetensors"].sha256
        assert {(r["state"], r["tier"]) for r in rows.values()} == {("READY", "remote")}
        meta = http(worker.url, "GET", "/v2/models/mlp-00").json()
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]

        inputs = sample_inputs(zoo, "mlp-00", 2, seed=9)
        sources = []
        for _ in range(2):
            resp = http(worker.url, "POST", "/v2/models/mlp-00/infer", infer_body(inputs))
            assert resp.status == 200, resp.body
            sources.append(resp.headers["x-model-source"])
            got = np.asarray(resp.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 10)
            np.testing.assert_allclose(got, run_reference(zoo, "mlp-00", [a for _, _, a in inputs])[0], rtol=1e-4)
        assert sources == ["remote", "cpu"]
        assert (cache / "mlp-00/1/model.safetensors").read_bytes() == (zoo / "mlp-00/1/model.safetensors").read_bytes()
        report = http(worker.url, "GET", "/admin/memory").json()
        disk = next(t for t in report["tiers"] if t["tier"] == "disk")
        assert [m["name"] for m in disk["models"]] == ["mlp-00"] and disk["budget"] == 8 << 20
        assert report["remote"] == (f"s3://{BUCKET}/zoo" if kind == "s3" else (tmp_path / "store").as_uri())
        text = http(worker.url, "GET", "/metrics").body.decode()
        assert metric_sum(text, "affinity_model_loads_total", tier="remote") == 1
        assert http(worker.url, "POST", "/v2/models/no-such/infer", infer_body(inputs)).status == 404

        # published after start: an explicit load finds it, without waiting for the rescan
        if kind == "s3":
            for path in sorted((published / "cnn-01").rglob("*.*")):
                key = f"zoo/late-cnn/{path.relative_to(published / 'cnn-01')}"
                client.upload_file(str(path), BUCKET, key)
            name = "late-cnn"
        else:
            shutil.copytree(published / "transformer-02", tmp_path / "store" / "transformer-02")
            name = "transformer-02"
        resp = http(worker.url, "POST", f"/v2/repository/models/{name}/load", b"")
        assert resp.status == 200, resp.body
        assert (resp.json()["tier"], resp.json()["state"]) == ("cpu", "READY")
        assert name in {r["name"] for r in http(worker.url, "POST", "/v2/repository/index", b"{}").json()}
    finally:
        worker.proc.stop()
    assert not cache.exists() or all(not p.name.startswith(".staging") for p in cache.iterdir())
