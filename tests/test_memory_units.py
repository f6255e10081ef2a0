"""The memory manager's pure parts: safetensors headers, manifests, eviction
policies on scripted traces, and one tier's byte accounting."""

from __future__ import annotations

import struct
from pathlib import Path

import orjson
import pytest
import torch
from safetensors.torch import save_file

from worker.eviction import Candidate, GreedyDualSize, LeastRecentlyUsed, make_policy
from worker.manifest import MANIFEST_FILE, InvalidManifest, Manifest, write_manifest
from worker.tiers import BudgetExceeded, Tier
from worker.weights import InvalidWeights, read_weights_info

# -- safetensors headers --------------------------------------------------------------


def _file(tmp_path: Path, header: dict[str, object], data: bytes) -> Path:
    raw = orjson.dumps(header)
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_header_of_a_real_file_gives_the_tensor_bytes(tmp_path: Path) -> None:
    tensors = {
        "a": torch.zeros(3, 5),
        "b": torch.zeros(7, dtype=torch.int64),
        "c": torch.zeros(2, 2, dtype=torch.bfloat16),
    }
    save_file(tensors, str(tmp_path / "m.safetensors"), metadata={"format": "pt"})
    info = read_weights_info(tmp_path / "m.safetensors")
    assert info.tensor_bytes == 15 * 4 + 7 * 8 + 4 * 2
    assert info.tensors["b"].dtype == "I64" and info.tensors["b"].shape == (7,)
    assert info.metadata == {"format": "pt"}
    assert info.file_bytes == (tmp_path / "m.safetensors").stat().st_size


@pytest.mark.parametrize(
    ("header", "data", "problem"),
    [
        # declares more bytes than the file holds ("Bleeding Llama")
        ({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, b"\0" * 40, "data section"),
        # byte range disagrees with dtype x shape
        ({"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 40]}}, b"\0" * 40, "does not match"),
        # overlapping tensors
        (
            {
                "a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
                "b": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            "overlap",
        ),
        # a gap in the data section
        ({"w": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}}, b"\0" * 8, "gaps"),
        # trailing bytes no tensor claims
        ({"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 9, "data section"),
        ({"w": {"dtype": "PICKLE", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4, "dtype"),
        ({"w": {"dtype": "U8", "shape": [-4], "data_offsets": [0, 4]}}, b"\0" * 4, "shape"),
        ({"w": {"dtype": "U8", "shape": [4], "data_offsets": [4, 0]}}, b"\0" * 4, "ends before"),
        ({"w": [1, 2]}, b"", "not an object"),
    ],
)
def test_bad_headers_are_refused(tmp_path: Path, header: dict[str, object], data: bytes, problem: str) -> None:
    with pytest.raises(InvalidWeights, match=problem):
        read_weights_info(_file(tmp_path, header, data))


def test_header_length_beyond_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(InvalidWeights, match="header length"):
        read_weights_info(path)
    path.write_bytes(b"\x80\x04pickle")
    with pytest.raises(InvalidWeights):
        read_weights_info(path)
    path.write_bytes(b"abc")
    with pytest.raises(InvalidWeights, match="shorter"):
        read_weights_info(path)


# -- manifests ---------------------------------------------------------------------------


def test_write_manifest_hashes_every_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes(b"{}")
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    manifest = write_manifest(tmp_path)
    again = Manifest.from_bytes((tmp_path / MANIFEST_FILE).read_bytes())
    assert again == manifest
    assert manifest.files["model.safetensors"].size == 1000
    assert manifest.files["config.json"].sha256 == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    assert manifest.total_bytes == 1002
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b'{"files": {}}',
        b'{"files": {"../etc/passwd": {"size": 1, "sha256": "' + b"a" * 64 + b'"}}}',
        b'{"files": {"config.json": {"size": -1, "sha256": "' + b"a" * 64 + b'"}}}',
        b'{"files": {"config.json": {"size": 1, "sha256": "xyz"}}}',
        b'{"files": {"model.safetensors": {"size": 1, "sha256": "' + b"a" * 64 + b'"}}}',  # no config.json
        b"not json",
    ],
)
def test_bad_manifests_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidManifest):
        Manifest.from_bytes(raw)


# -- eviction policies on scripted traces -------------------------------------------------


def _all(*sizes: tuple[str, int]) -> list[Candidate]:
    return [Candidate(k, s) for k, s in sizes]


def test_lru_evicts_least_recently_used_first() -> None:
    lru = LeastRecentlyUsed()
    for key in "abcd":
        lru.admit(key, 10, cost=1.0)
    lru.touch("a")  # order now b, c, d, a
    resident = _all(("a", 10), ("b", 10), ("c", 10), ("d", 10))
    assert lru.victims(resident, 10) == ["b"]
    assert lru.victims(resident, 25) == ["b", "c", "d"]
    # only what the caller offers may go (c is in use)
    assert lru.victims(_all(("a", 10), ("b", 10), ("d", 10)), 15) == ["b", "d"]
    lru.forget("b", evicted=True)
    assert lru.victims(resident, 1) == ["c"]


def test_gds_weighs_reload_cost_against_size() -> None:
    gds = GreedyDualSize()
    gds.admit("big-cheap", 100, cost=1.0)  # credit 0.01
    gds.admit("small-costly", 10, cost=1.0)  # credit 0.1
    gds.admit("mid", 50, cost=1.0)  # credit 0.02
    resident = _all(("big-cheap", 100), ("small-costly", 10), ("mid", 50))
    assert gds.victims(resident, 1) == ["big-cheap"]
    assert gds.victims(resident, 120) == ["big-cheap", "mid"]
    # LRU on the same trace would evict big-cheap, then small-costly (admission order)
    lru = make_policy("lru")
    for c in resident:
        lru.admit(c.key, c.size, 1.0)
    assert lru.victims(resident, 105) == ["big-cheap", "small-costly"]


def test_gds_ages_by_inflation_so_recency_counts() -> None:
    gds = GreedyDualSize()
    gds.admit("old-costly", 10, cost=1.0)  # H = 0.1
    gds.admit("x", 10, cost=0.5)  # H = 0.05
    assert gds.victims(_all(("old-costly", 10), ("x", 10)), 1) == ["x"]
    gds.forget("x", evicted=True)
    assert gds.inflation == pytest.approx(0.05)
    # Evictions keep raising L; a newcomer's credit starts from L, so a model not
    # used since ends up below fresh ones even if it once was costlier.
    for i in range(3):
        gds.admit(f"n{i}", 10, cost=0.6)  # H = L + 0.06
        gds.forget(f"n{i}", evicted=True)  # L rises to that H
    assert gds.inflation == pytest.approx(0.05 + 3 * 0.06)
    gds.admit("fresh", 10, cost=0.5)  # H = L + 0.05 > 0.1
    assert gds.credit("fresh") > gds.credit("old-costly")
    assert gds.victims(_all(("old-costly", 10), ("fresh", 10)), 1) == ["old-costly"]
    gds.touch("old-costly")  # a hit refreshes its credit: H = L + 0.1
    assert gds.victims(_all(("old-costly", 10), ("fresh", 10)), 1) == ["fresh"]


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown eviction policy"):
        make_policy("fifo")


# -- one tier's accounting -----------------------------------------------------------------


def test_tier_plans_room_and_refuses_to_go_over_budget() -> None:
    tier: Tier[str] = Tier("cpu", 100, make_policy("lru"))
    tier.reserve("a", 40)
    tier.commit("a", 1.0)
    tier.reserve("b", 40)
    tier.commit("b", 1.0)
    assert tier.plan(20, lambda k: True) == []
    assert tier.plan(30, lambda k: True) == ["a"]
    assert tier.plan(30, lambda k: k != "a") == ["b"]
    assert tier.plan(30, lambda k: False) is None
    assert tier.plan(101, lambda k: True) is None
    tier.reserve("c", 20)  # reservations count against the budget
    assert tier.free == 0
    with pytest.raises(BudgetExceeded):
        tier.reserve("d", 1)
    tier.cancel("c")
    assert tier.free == 20
