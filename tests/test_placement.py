"""Placement: a model's home is the first worker on its ring order with room for
it (its fair share of the models' bytes, and its memory). Pure properties first,
then a real two-worker cluster whose ring gives one worker more models than its
budget holds."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from pathlib import Path

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from balancer.members import Members, WorkerAddress
from balancer.placement import BALANCE_SLACK, place
from balancer.ring import HashRing
from tests.harness import Server, request, start_balancer, start_worker
from tests.metrics_text import metric_sum
from tests.reference import infer_body, sample_inputs
from worker.zoo import make_zoo

worker_ids = st.lists(st.text("abcdefgh0123456789:.", min_size=1, max_size=12), min_size=1, max_size=6, unique=True)
model_sizes = st.dictionaries(st.from_regex(r"m[0-9]{1,3}", fullmatch=True), st.integers(0, 1000), max_size=40)


@given(workers=worker_ids, models=st.lists(st.from_regex(r"m[0-9]{1,3}", fullmatch=True), max_size=40))
def test_models_of_unknown_size_stay_with_their_ring_owners(workers: list[str], models: list[str]) -> None:
    ring = HashRing(workers)
    homes = place(dict.fromkeys(models, 0), ring.preference_list, dict.fromkeys(workers, 0))
    assert homes == {m: ring.preference_list(m)[0] for m in models}


@given(workers=worker_ids, roomy=st.booleans(), data=st.data())
def test_no_worker_is_given_more_than_its_fair_share_when_no_model_is_large(
    workers: list[str], roomy: bool, data: st.DataObject
) -> None:
    """Shares by capacity (unknown, 0, counts as the smallest known): where every
    model is within a share's slack, first fit always finds a worker under its
    bound (if all were over it, more than the total would be placed), so the
    busiest worker holds at most 10% past its share, however the ring falls."""
    count = data.draw(st.integers(40, 60)) * len(workers)  # each model within a tenth of the smallest share
    sizes = {f"m{i}": data.draw(st.integers(50, 100)) for i in range(count)}
    total = sum(sizes.values())
    capacities = {w: data.draw(st.sampled_from([0, 1, 2])) * (10 * total + 1) for w in workers} if roomy else {}
    capacities = capacities or dict.fromkeys(workers, 0)
    known = [c for c in capacities.values() if c > 0]
    weights = {w: c or min(known, default=1) for w, c in capacities.items()}
    share = {w: total * weights[w] / sum(weights.values()) for w in workers}
    assume(max(sizes.values()) <= BALANCE_SLACK * min(share.values()))
    homes = place(sizes, HashRing(workers).preference_list, capacities)
    placed = Counter[str]()
    for model, home in homes.items():
        placed[home] += sizes[model]
    assert set(homes) == set(sizes)
    assert all(placed[w] <= (1 + BALANCE_SLACK) * share[w] for w in workers), (placed, share)


@given(workers=worker_ids, sizes=model_sizes, data=st.data())
def test_no_worker_is_given_more_than_its_memory_when_the_total_fits(
    workers: list[str], sizes: dict[str, int], data: st.DataObject
) -> None:
    """Room for a fair share plus the largest model on every worker: first fit in
    ring order then always finds a worker with room (if all were full, more than
    the total would be placed)."""
    ring = HashRing(workers)
    floor = sum(sizes.values()) // len(workers) + max(sizes.values(), default=0)
    capacities = {w: data.draw(st.integers(floor, floor + 500)) for w in workers}
    homes = place(sizes, ring.preference_list, capacities)
    placed = Counter[str]()
    for model, home in homes.items():
        placed[home] += sizes[model]
    assert set(homes) == set(sizes)
    assert all(placed[w] <= capacities[w] for w in workers), (placed, capacities)


@given(workers=worker_ids, sizes=model_sizes)
def test_two_balancers_with_the_same_index_place_alike(workers: list[str], sizes: dict[str, int]) -> None:
    shuffled = list(sizes.items())
    random.Random(7).shuffle(shuffled)
    capacities = {w: 300 for w in workers}
    first = place(sizes, HashRing(workers).preference_list, capacities)
    second = place(dict(shuffled), HashRing(reversed(workers)).preference_list, capacities)
    assert first == second


@settings(max_examples=50)
@given(a=st.text("abcdef0123456789", min_size=1, max_size=8), b=st.text("ghijk0123456789", min_size=1, max_size=8))
def test_twelve_equal_models_split_six_and_six_whatever_the_ring_says(a: str, b: str) -> None:
    """The throughput bench's cases: budgets holding six and a half models each, and
    budgets holding every model (where only the fair share bounds a worker)."""
    a, b = f"a-{a}", f"b-{b}"
    ring = HashRing([a, b])
    sizes = {f"m{i}": 3 << 20 for i in range(12)}
    for budget in (13 * (3 << 20) // 2, 64 << 20, 0):
        homes = place(sizes, ring.preference_list, {a: budget, b: budget})
        assert Counter(homes.values()) == {a: 6, b: 6}, budget


def test_a_worker_with_twice_the_memory_is_given_twice_the_models() -> None:
    ring = HashRing(["big:1", "small:2", "small:3"])
    sizes = {f"m{i}": 100 for i in range(40)}
    homes = place(sizes, ring.preference_list, {"big:1": 8000, "small:2": 4000, "small:3": 4000})
    given = Counter(homes.values())
    assert 18 <= given["big:1"] <= 22 and all(9 <= given[w] <= 11 for w in ("small:2", "small:3")), given


def test_members_put_the_placed_home_first_then_ring_order() -> None:
    workers = {w: WorkerAddress(f"http://{w}") for w in ("w1:1", "w2:2", "w3:3")}
    members = Members(workers)
    members.set_members(workers, dict.fromkeys(workers, 10))
    models = [f"m{i}" for i in range(30)]
    ring_order = {m: members.candidates(m) for m in models}
    members.set_model_sizes(dict.fromkeys(models, 1))  # room for ten on each worker
    homes = Counter(members.candidates(m)[0] for m in models)
    assert sorted(homes.values()) == [10, 10, 10], homes
    for m in models:
        home, rest = members.candidates(m)[0], members.candidates(m)[1:]
        assert rest == tuple(w for w in ring_order[m] if w != home), "the rest in ring order"
    members.set_model_sizes({})
    assert {m: members.candidates(m) for m in models} == ring_order, "no sizes: the ring alone"


def _unbalanced_ids(models: list[str]) -> tuple[str, str]:
    """Two worker ids whose ring gives one of them at least three quarters of the models."""
    for i, j in itertools.combinations(range(200), 2):
        ids = (f"placement-{i}", f"placement-{j}")
        ring = HashRing(ids)
        if max(Counter(ring.preference_list(m)[0] for m in models).values()) >= len(models) * 3 // 4:
            return ids
    raise AssertionError("no unbalanced pair of ids among the first 200")


def _loads(worker: Server) -> float:
    return metric_sum(request(worker.url, "GET", "/metrics").body.decode(), "affinity_model_loads_total")


def test_each_model_stays_resident_when_the_ring_gives_one_worker_too_many(tmp_path: Path, logdir: Path) -> None:
    """Eight models of one size, two workers whose budgets hold five each, ids whose
    ring gives one worker six or more: placed by memory, each worker holds what it
    serves and after the first round no model is loaded again (by the ring alone,
    the crowded worker would page one in on nearly every pass)."""
    made = make_zoo(tmp_path / "models", count=8, sizes=[96 << 10] * 8, architectures=("mlp",))
    models = [m.name for m in made]
    size = max(m.path.joinpath("model.safetensors").stat().st_size for m in made)
    budget = str(5 * size + size // 2)
    ids = _unbalanced_ids(models)
    workers = [start_worker(tmp_path / "models", logdir, "--worker-id", wid, "--cpu-memory", budget) for wid in ids]
    balancer = None
    try:
        for w in workers:
            w.wait_ready()
        balancer = start_balancer(workers, logdir, "--policy", "affinity").wait_ready()
        seeds = itertools.count(70_000)
        for _ in range(4):
            for model in models:
                body = infer_body(sample_inputs(tmp_path / "models", model, 1, next(seeds)))
                resp = request(balancer.url, "POST", f"/v2/models/{model}/infer", body, {"Cache-Control": "no-cache"})
                assert resp.status == 200, resp.body
        assert sum(_loads(w) for w in workers) == len(models), "each model loaded once, where it lives"
        homes = request(balancer.url, "GET", "/admin/cluster").json()["models"]
        placed = Counter(homes[m]["home"] for m in models)
        assert set(placed) == set(ids) and max(placed.values()) <= 5, placed
    finally:
        if balancer is not None:
            balancer.proc.stop()
        for w in workers:
            w.proc.stop()


def test_homes_follow_membership_and_drains_not_one_balancers_view_of_health() -> None:
    """Ejection is each balancer's own: an ejected worker's models go to the next
    admitted worker in ring order and nobody else's move; a drain, which every
    balancer is told of, places again."""
    from balancer.health import HealthBook, HealthSettings

    workers = {w: WorkerAddress(f"http://{w}") for w in ("w1:1", "w2:2", "w3:3")}
    members = Members(workers, HealthBook(HealthSettings(fall=1)), panic_threshold=0.9)
    members.set_members(workers, dict.fromkeys(workers, 10))
    models = [f"m{i}" for i in range(30)]
    members.set_model_sizes(dict.fromkeys(models, 1))
    homes = dict(members.homes)
    out = "w1:1"
    members.health.probe(out, False)
    assert members.homes == homes, "placement ignores health"
    for m in models:
        candidates = members.candidates(m)
        assert out not in candidates
        if homes[m] != out:
            assert candidates[0] == homes[m], "only the ejected worker's models go elsewhere"
    assert members.panic and {m for m in models if members.owner_out(m)} == {m for m in models if homes[m] == out}
    members.health.probe(out, True)
    members.drain("w2:2")
    assert "w2:2" not in members.homes.values(), "a drained worker is no one's home"
