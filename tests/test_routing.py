"""The ring and the routing policies: pure logic, property-tested."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.config import worker_url
from balancer.members import Members, WorkerAddress
from balancer.policy import BoundedLoadPolicy, ConsistentPolicy
from balancer.ring import HashRing

MODELS = [f"model-{i}" for i in range(2000)]


def test_two_rings_with_the_same_members_agree() -> None:
    a = HashRing(["w1:1", "w2:2", "w3:3"])
    b = HashRing(["w3:3", "w1:1", "w2:2"])
    assert all(a.preference_list(m) == b.preference_list(m) for m in MODELS[:200])


@settings(max_examples=10, deadline=None)
@given(st.integers(3, 8), st.data())
def test_removing_a_worker_moves_only_its_models(n: int, data: st.DataObject) -> None:
    nodes = [f"10.0.0.{i}:8100" for i in range(n)]
    ring = HashRing(nodes)
    before = {m: ring.preference_list(m)[0] for m in MODELS}
    gone = data.draw(st.sampled_from(nodes))
    ring.remove(gone)
    after = {m: ring.preference_list(m)[0] for m in MODELS}
    moved = [m for m in MODELS if before[m] != after[m]]
    assert all(before[m] == gone for m in moved), "only the removed worker's models move"
    assert len(moved) == sum(1 for m in MODELS if before[m] == gone)
    assert len(moved) < 2.0 * len(MODELS) / n, "about 1/N of the models move"
    ring.add(gone)
    assert {m: ring.preference_list(m)[0] for m in MODELS} == before, "re-adding restores the old owners"


def test_preference_list_is_every_worker_once() -> None:
    ring = HashRing(["a:1", "b:2", "c:3"])
    for m in MODELS[:100]:
        assert sorted(ring.preference_list(m)) == ["a:1", "b:2", "c:3"]


@given(
    st.lists(st.integers(0, 50), min_size=1, max_size=8),
    st.floats(1.0, 3.0),
    st.sampled_from(MODELS[:50]),
)
def test_bounded_load_never_picks_a_worker_over_the_cap(loads: list[int], factor: float, model: str) -> None:
    workers = [f"w{i}:1" for i in range(len(loads))]
    ring = HashRing(workers)
    counts = dict(zip(workers, loads, strict=True))
    policy = BoundedLoadPolicy(factor)
    chosen = policy.choose(model, ring.preference_list(model), counts)
    assert counts[chosen] < policy.cap(counts)


def test_bounded_load_keeps_affinity_when_balanced_and_spills_along_the_ring() -> None:
    ring = HashRing(["a:1", "b:2", "c:3"])
    prefs = ring.preference_list("hot")
    policy = BoundedLoadPolicy(1.25)
    idle = dict.fromkeys(prefs, 0)
    assert policy.choose("hot", prefs, idle) == prefs[0]
    busy = {prefs[0]: 10, prefs[1]: 0, prefs[2]: 0}
    assert policy.choose("hot", prefs, busy) == prefs[1], "spill goes to the ring successor"
    assert ConsistentPolicy().choose("hot", prefs, busy) == prefs[0]


def test_members_apply_changes_as_diffs() -> None:
    a, b, c = (WorkerAddress(f"http://127.0.0.1:{port}") for port in (1, 2, 3))
    members = Members({"a": a, "b": b})
    assert set(members.addresses) == {"a", "b"}
    owners = {m: members.ring.preference_list(m)[0] for m in MODELS[:300]}
    members.begin("a")
    members.set_members({"a": a, "b": b, "c": c})
    assert members.inflight["a"] == 1, "a change keeps the counts of workers that stay"
    moved = [m for m in owners if members.ring.preference_list(m)[0] != owners[m]]
    assert all(members.ring.preference_list(m)[0] == "c" for m in moved)
    moved_b = WorkerAddress("http://127.0.0.1:9", "127.0.0.1:10")
    members.set_members({"b": moved_b})
    members.end("a")  # finishing a request on a worker that left is harmless
    assert members.addresses == {"b": moved_b}, "a worker that moved keeps its id and place"


def test_worker_url_forms() -> None:
    assert worker_url("http://h:81/") == "http://h:81"
    assert worker_url("h:81") == "http://h:81"
    for bad in ("h", "https://h:1", "http://h:1/path", "ftp://h:1"):
        with pytest.raises(ValueError, match="not of the form"):
            worker_url(bad)
