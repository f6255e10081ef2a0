"""The pure parts of wiring the memory manager into the worker: the catalog of
local and remote models, the statistics shapes and their sums, budgets as sizes
or shares, the worker's config checks, the load route's parameters, and the
process's RSS and PSS."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from common.units import Amount, parse_amount
from protocol.errors import BadRequest, ModelNotFound
from protocol.repository import load_parameters
from protocol.stats import ModelStats, combine, parse_stats_body, stats_body
from worker.catalog import Catalog
from worker.config import WorkerConfig
from worker.host_memory import process_memory
from worker.manifest import write_manifest
from worker.remote_store import DirectoryStore, RemoteStoreError
from worker.stats import BatchTimes, ModelStatistics
from worker.zoo import make_zoo


@pytest.fixture
def two_places(tmp_path: Path) -> tuple[Path, Path]:
    """A local repository (a, b) and a directory store (b version 2, c), with manifests."""
    local, store = tmp_path / "local", tmp_path / "store"
    made = make_zoo(tmp_path / "made", count=3, min_size=16 << 10, max_size=32 << 10, architectures=("mlp",))
    a, b, c = (m.path for m in made)
    shutil.copytree(a, local / "a" / "1")
    shutil.copytree(b, local / "b" / "1")
    shutil.copytree(c, store / "b" / "1")  # shadowed by the local b/1
    shutil.copytree(a, store / "b" / "2")
    shutil.copytree(c, store / "c" / "1")
    for version in store.glob("*/*"):
        write_manifest(version)
    return local, store


def test_catalog_merges_the_repository_and_the_store_local_first(two_places: tuple[Path, Path]) -> None:
    local, store = two_places
    catalog = Catalog(local, DirectoryStore(store))
    assert catalog.install(catalog.scan()) == []
    assert [(e.name, e.version) for e in catalog.all_versions()] == [("a", "1"), ("b", "1"), ("b", "2"), ("c", "1")]
    assert catalog.resolve("b").version == "2" and catalog.resolve("b").path is None  # from the store
    assert catalog.local_path(("b", "1")) == local / "b" / "1"
    assert catalog.local_path(("c", "1")) is None
    remote = catalog.resolve("c")
    assert remote.config is not None and remote.config.architecture == "mlp" and len(remote.sha256) == 64
    with pytest.raises(ModelNotFound):
        catalog.resolve("d")


def test_catalog_install_names_changed_and_vanished_versions(two_places: tuple[Path, Path], tmp_path: Path) -> None:
    local, store = two_places
    catalog = Catalog(local, DirectoryStore(store))
    catalog.install(catalog.scan())
    shutil.copyfile(local / "a/1/model.safetensors", tmp_path / "copy")
    os.replace(tmp_path / "copy", local / "b/1/model.safetensors")  # other weights for b/1
    shutil.rmtree(store / "c")
    assert sorted(catalog.install(catalog.scan())) == [("b", "1"), ("c", "1")]
    assert catalog.install(catalog.scan()) == [], "nothing changed since"
    # the store's files of a version are read once; an explicit refresh reads them again
    shutil.copyfile(store / "b/1/model.safetensors", store / "b/2/model.safetensors")  # c's weights, not a's
    write_manifest(store / "b" / "2")
    assert catalog.install(catalog.scan()) == []
    assert catalog.install(catalog.scan(frozenset({"b"}))) == [("b", "2")]


def test_catalog_keeps_the_last_listing_when_the_store_fails(two_places: tuple[Path, Path]) -> None:
    _, store = two_places
    directory = DirectoryStore(store)
    catalog = Catalog(None, directory)
    catalog.install(catalog.scan())
    directory.root = store / "gone"
    assert catalog.install(catalog.scan()) == []
    assert catalog.has("c") and catalog.store_error is not None
    with pytest.raises(RemoteStoreError):
        directory.list_versions()


def test_catalog_reports_an_unusable_remote_version(two_places: tuple[Path, Path]) -> None:
    _, store = two_places
    (store / "c/1/config.json").write_bytes(b"{not json")
    write_manifest(store / "c" / "1")
    catalog = Catalog(None, DirectoryStore(store))
    catalog.install(catalog.scan())
    entry = catalog.resolve("c")
    assert entry.config is None and "not valid JSON" in entry.problem


def _stats(name: str, success: int, rows: int, loads: int) -> ModelStats:
    recorder = ModelStatistics(now_ms=lambda: 1000 + success)
    for _ in range(success):
        recorder.request((name, "1"), True, 10)
    recorder.request((name, "1"), False, 7)
    times = BatchTimes(forwards=[(rows, 3, 5, 2)], requests=1, queue_ns=4, input_ns=3, infer_ns=5, output_ns=2)
    recorder.batch((name, "1"), times)
    for _ in range(loads):
        recorder.loaded((name, "1"), 0.5)
    return recorder.of((name, "1"), [("cpu", 100)])


def test_statistics_round_trip_and_combine_by_summing() -> None:
    one = _stats("m", success=2, rows=4, loads=1)
    assert ModelStats.from_json(one.to_json()).to_json() == one.to_json()
    assert parse_stats_body(stats_body([one])) == [one]
    body = one.to_json()
    assert body["inference_stats"]["success"] == {"count": 2, "ns": 20}
    assert body["inference_stats"]["fail"] == {"count": 1, "ns": 7}
    assert body["inference_stats"]["queue"] == {"count": 1, "ns": 4}
    assert (body["inference_count"], body["execution_count"], body["last_inference"]) == (4, 1, 1002)
    assert body["batch_stats"] == [
        {"batch_size": 4, "compute_input": {"count": 1, "ns": 3}, "compute_infer": {"count": 1, "ns": 5},
         "compute_output": {"count": 1, "ns": 2}}
    ]  # fmt: skip
    assert body["memory_usage"] == [{"type": "CPU", "id": 0, "byte_size": 100}]
    assert body["load_stats"] == {"count": 1, "ns": 500_000_000}

    [both, other] = combine([[one], [_stats("m", success=3, rows=2, loads=2), _stats("n", 1, 1, 0)]])
    assert (other.name, both.name) == ("n", "m")
    summed = both.to_json()
    assert summed["inference_stats"]["success"] == {"count": 5, "ns": 50}
    assert summed["inference_count"] == 6 and summed["execution_count"] == 2 and summed["last_inference"] == 1003
    assert [b["batch_size"] for b in summed["batch_stats"]] == [2, 4]
    assert summed["load_stats"]["count"] == 3 and len(summed["memory_usage"]) == 2
    for garbage in ([], {"model_stats": 3}, {"model_stats": [{"version": "1"}]}):
        with pytest.raises(ValueError):
            parse_stats_body(garbage)


def test_statistics_forget_versions_that_left() -> None:
    recorder = ModelStatistics()
    recorder.request(("m", "1"), True, 1)
    recorder.request(("m", "2"), True, 1)
    recorder.forget(lambda key: key != ("m", "1"))
    assert recorder.of(("m", "1"), []).inference["success"].count == 0
    assert recorder.of(("m", "2"), []).inference["success"].count == 1


def test_budgets_are_sizes_or_shares() -> None:
    assert parse_amount("512MiB") == Amount(bytes=512 << 20)
    assert parse_amount("25%").resolve(1000) == 250 and str(parse_amount("25%")) == "25%"
    assert parse_amount("0").resolve(1 << 30) == 0
    for bad in ("120%", "-5%", "lots", "%"):
        with pytest.raises(ValueError):
            parse_amount(bad)


def test_worker_config_checks_its_memory_settings(tmp_path: Path) -> None:
    base = WorkerConfig(tmp_path)
    assert base.cpu_memory.share == 0.5 and base.device == "auto" and base.admin_token is None
    assert "secret" not in repr(WorkerConfig(tmp_path, admin_token="secret"))
    assert WorkerConfig(remote_store=tmp_path.as_uri()).models is None, "a store alone is enough"
    for kwargs, message in [
        ({}, "--models"),
        ({"models": tmp_path, "eviction": "fifo"}, "eviction"),
        ({"models": tmp_path, "device": "tpu"}, "device"),
        ({"models": tmp_path, "cpu_memory": Amount(bytes=0)}, "CPU memory"),
        ({"remote_store": "http://example.com/x"}, "unsupported"),
        ({"remote_store": tmp_path.as_uri(), "remote_endpoint": "http://127.0.0.1:9"}, "s3://"),
        ({"remote_store": (tmp_path / "missing").as_uri()}, "does not exist"),
        ({"models": tmp_path, "remote_endpoint": "http://127.0.0.1:9"}, "--remote-store"),
        ({"models": tmp_path, "admin_token": " "}, "empty"),
    ]:
        with pytest.raises(ValueError, match=message):
            WorkerConfig(**kwargs)  # type: ignore[arg-type]
    assert WorkerConfig(remote_store="s3://bucket/prefix", remote_endpoint="http://127.0.0.1:9").device == "auto"
    assert WorkerConfig(tmp_path, device="cuda:1").device == "cuda:1"


def test_load_parameters() -> None:
    assert load_parameters(b"") == (None, None)
    assert load_parameters(b'{"parameters": {"version": "2", "pinned": true}}') == ("2", True)
    assert load_parameters(b'{"parameters": {"version": 3}}') == ("3", None)
    for bad in (b'{"parameters": {"file:model.safetensors": "..."}}', b'{"parameters": {"pinned": "yes"}}',
                b'{"parameters": {"version": "0"}}', b'{"parameters": []}', b"[1]"):  # fmt: skip
        with pytest.raises(BadRequest):
            load_parameters(bad)


def test_process_memory_reads_rss_and_pss(tmp_path: Path) -> None:
    fake = tmp_path / "smaps_rollup"
    fake.write_text("00400000-7fff [rollup]\nRss:      1024 kB\nPss:       512 kB\nShared_Clean: 3 kB\n")
    usage = process_memory(fake)
    assert (usage.rss, usage.pss) == (1 << 20, 512 << 10)
    assert process_memory(tmp_path / "missing").to_json() == {"rss_bytes": None, "pss_bytes": None}
    if Path("/proc/self/smaps_rollup").exists():
        real = process_memory()
        assert real.rss is not None and real.pss is not None and 0 < real.pss <= real.rss
