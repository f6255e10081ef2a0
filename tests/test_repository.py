"""The model repository on disk and the balancer's merged view of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from balancer.index import merge
from protocol.errors import NotFound
from protocol.types import IndexEntry
from worker.repository import Repository


def _version(root: Path, name: str, version: str, config: bytes | None = None, weights: bool = True) -> None:
    target = root / name / version
    target.mkdir(parents=True)
    (target / "config.json").write_bytes(
        config
        if config is not None
        else b'{"architecture":"mlp","args":{"in_features":2,"hidden":[],"out_features":1},'
        b'"inputs":[{"name":"input","datatype":"FP32","shape":[-1,2]}],'
        b'"outputs":[{"name":"logits","datatype":"FP32","shape":[-1,1]}],"max_batch_size":4}'
    )
    if weights:
        (target / "model.safetensors").write_bytes(b"")


def test_latest_version_is_the_highest_number(tmp_path: Path) -> None:
    for v in ("1", "2", "9", "10"):
        _version(tmp_path, "m", v)
    repo = Repository(tmp_path)
    repo.scan()
    assert repo.resolve("m").version == "10"
    assert repo.resolve("m", "9").version == "9"
    assert [v.version for v in repo.versions("m")] == ["1", "2", "9", "10"]
    with pytest.raises(NotFound, match="version '3'"):
        repo.resolve("m", "3")
    with pytest.raises(NotFound, match="unknown model"):
        repo.resolve("other")


def test_names_and_versions_that_break_the_rule_are_skipped(tmp_path: Path) -> None:
    _version(tmp_path, "good", "1")
    _version(tmp_path, ".hidden", "1")
    _version(tmp_path, "has space", "1")
    _version(tmp_path, "good", "0")
    _version(tmp_path, "good", "latest")
    repo = Repository(tmp_path)
    repo.scan()
    assert [v.name for v in repo.all_versions()] == ["good"]
    assert [v.version for v in repo.versions("good")] == ["1"]


def test_unusable_versions_say_why(tmp_path: Path) -> None:
    _version(tmp_path, "no-weights", "1", weights=False)
    _version(tmp_path, "bad-json", "1", config=b"{not json")
    _version(tmp_path, "bad-shape", "1", config=b'{"architecture":"mlp","inputs":[],"outputs":[]}')
    repo = Repository(tmp_path)
    repo.scan()
    problems = {name: repo.resolve(name).problem for name in ("no-weights", "bad-json", "bad-shape")}
    assert "model.safetensors is missing" in problems["no-weights"]
    assert "not valid JSON" in problems["bad-json"]
    assert "at least one input" in problems["bad-shape"]
    assert all(str(tmp_path) not in p for p in problems.values()), "no paths in reasons"


def test_a_rescan_sees_new_versions(tmp_path: Path) -> None:
    _version(tmp_path, "m", "1")
    repo = Repository(tmp_path)
    repo.scan()
    _version(tmp_path, "m", "2")
    assert repo.resolve("m").version == "1"
    repo.scan()
    assert repo.resolve("m").version == "2"


def test_balancer_index_merges_workers_views() -> None:
    rows = [
        ("w1:1", IndexEntry("m", "9", "READY", resident=True)),
        ("w2:2", IndexEntry("m", "10", "READY")),
        ("w2:2", IndexEntry("m", "9", "UNAVAILABLE", "weights could not be read")),
        ("w1:1", IndexEntry("n", "1", "READY", deterministic=False)),
        ("w2:2", IndexEntry("n", "1", "READY")),
    ]
    models, merged = merge(rows)
    assert models["m"].latest == "10" and models["m"].versions == {"9", "10"}
    assert not models["n"].deterministic, "one worker saying non-deterministic is enough"
    m9 = next(r for r in merged if r["name"] == "m" and r["version"] == "9")
    assert m9["state"] == "UNAVAILABLE" and m9["reason"] == "weights could not be read"
    assert m9["resident_on"] == ["w1:1"]
