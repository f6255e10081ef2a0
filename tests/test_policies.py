"""Policies, capacity weighting, health and the retry budget: pure logic,
property-tested, with a fake clock where time matters (replicas: tests/test_replicas.py)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.budget import RetryBudget
from balancer.health import HealthBook, HealthSettings
from balancer.members import Members, WorkerAddress
from balancer.policy import (
    DEFAULT_COLD_SPILL_SLACK,
    POLICIES,
    AffinityPolicy,
    BoundedLoadPolicy,
    PolicyContext,
    make_policy,
)
from balancer.residency import Residency
from balancer.ring import VNODES, HashRing

MODELS = [f"model-{i}" for i in range(3000)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def owners(ring: HashRing) -> Counter[str]:
    return Counter(ring.preference_list(m)[0] for m in MODELS)


# capacity-weighted ring


def test_a_worker_with_twice_the_capacity_owns_about_twice_the_models() -> None:
    ring = HashRing(capacities={"big": 8 << 30, "a": 4 << 30, "b": 4 << 30})
    assert ring.vnodes("big") == 2 * VNODES and ring.vnodes("a") == VNODES
    share = owners(ring)
    assert 1.6 < share["big"] / ((share["a"] + share["b"]) / 2) < 2.5


@settings(max_examples=10, deadline=None)
@given(st.lists(st.sampled_from([1, 2, 4]), min_size=3, max_size=6), st.data())
def test_weighted_ring_moves_only_the_leavers_models(units: list[int], data: st.DataObject) -> None:
    capacities = {f"w{i}": float(u << 30) for i, u in enumerate(units)}
    ring = HashRing(capacities=capacities)
    before = {m: ring.preference_list(m)[0] for m in MODELS}
    smallest = min(capacities.values())
    # a worker whose leaving keeps the smallest capacity on the ring: no rescaling
    leavers = [w for w, c in capacities.items() if c > smallest or sum(v == smallest for v in capacities.values()) > 1]
    gone = data.draw(st.sampled_from(leavers))
    ring.set_nodes({w: c for w, c in capacities.items() if w != gone})
    moved = [m for m in MODELS if ring.preference_list(m)[0] != before[m]]
    assert all(before[m] == gone for m in moved)
    assert len(moved) == sum(1 for m in MODELS if before[m] == gone)


def test_members_weigh_the_ring_and_the_caps_by_capacity() -> None:
    members = Members()
    addresses = {w: WorkerAddress(f"http://127.0.0.1:{p}") for p, w in enumerate(("a", "b", "c"), 1)}
    members.set_members(addresses, {"a": 2 << 30, "b": 1 << 30, "c": 1 << 30})
    assert members.shares == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.25})
    assert members.ring.vnodes("a") == 2 * members.ring.vnodes("b")
    policy = BoundedLoadPolicy(1.25, PolicyContext(members.shares))
    loads = {"a": 4, "b": 2, "c": 1}
    assert policy.cap(loads, "a") == 5 and policy.cap(loads, "b") == 3  # ceil(1.25 x 8 x share)


# policies


@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(1, 8)), min_size=1, max_size=8),
    st.floats(1.0, 3.0),
    st.sampled_from(MODELS[:50]),
    st.integers(1, 4),
)
def test_bounded_load_never_picks_a_worker_at_or_over_its_cap(
    spec: list[tuple[int, int]], factor: float, model: str, replicas: int
) -> None:
    workers = [f"w{i}" for i in range(len(spec))]
    loads = {w: load for w, (load, _) in zip(workers, spec, strict=True)}
    units = {w: units for w, (_, units) in zip(workers, spec, strict=True)}
    shares = {w: u / sum(units.values()) for w, u in units.items()}
    ring = HashRing(capacities={w: float(u) for w, u in units.items()})
    policy = AffinityPolicy(factor, PolicyContext(shares, replicas={model: replicas}))
    chosen = policy.choose(model, ring.preference_list(model), loads)
    assert loads[chosen] < policy.cap(loads, chosen)


@settings(max_examples=30)
@given(st.lists(st.integers(0, 20), min_size=2, max_size=6), st.sampled_from(MODELS[:100]))
def test_two_balancers_given_the_same_members_choose_the_same(loads_list: list[int], model: str) -> None:
    workers = [f"10.0.0.{i}:8100" for i in range(len(loads_list))]
    loads = dict(zip(workers, loads_list, strict=True))
    rings = HashRing(workers), HashRing(reversed(workers))
    for name in ("affinity", "consistent", "least-loaded"):
        picks = {make_policy(name, 1.25).choose(model, r.preference_list(model), loads) for r in rings}
        assert len(picks) == 1, name


def test_round_robin_random_and_least_loaded() -> None:
    workers = ("a", "b", "c")
    rr = make_policy("round-robin", 1.25)
    assert Counter(rr.choose("m", workers, {}) for _ in range(30)) == {"a": 10, "b": 10, "c": 10}
    least = make_policy("least-loaded", 1.25, PolicyContext({"a": 0.5, "b": 0.25, "c": 0.25}))
    assert least.choose("m", workers, {"a": 3, "b": 2, "c": 1}) == "c"
    assert least.choose("m", workers, {"a": 1, "b": 1, "c": 1}) == "a", "per unit of capacity"
    assert sorted(POLICIES) == sorted(["affinity", "consistent", "round-robin", "least-loaded", "random"])
    with pytest.raises(ValueError, match="unknown routing policy"):
        make_policy("fastest", 1.25)


def test_random_spreads_evenly() -> None:
    rand = make_policy("random", 1.25, PolicyContext(rng=random.Random(7)))
    counts = Counter(rand.choose("m", ("a", "b", "c"), {}) for _ in range(3000))
    assert all(850 < n < 1150 for n in counts.values())


def simulate(policy_name: str, hot_share: float, concurrency: int = 24, steps: int = 3000) -> Counter[str]:
    """Place ``steps`` requests with ``concurrency`` in flight (oldest finishes first):
    which workers served the hot model."""
    workers = [f"w{i}" for i in range(4)]
    ring = HashRing(workers)
    policy = make_policy(policy_name, 1.25)
    rng = random.Random(1)
    loads = dict.fromkeys(workers, 0)
    flying: list[str] = []
    served: Counter[str] = Counter()
    for _ in range(steps):
        model = "hot" if rng.random() < hot_share else rng.choice(MODELS[:200])
        worker = policy.choose(model, ring.preference_list(model), loads)
        loads[worker] += 1
        flying.append(worker)
        if model == "hot":
            served[worker] += 1
        if len(flying) >= concurrency:
            loads[flying.pop(0)] -= 1
    return served


def test_skew_spreads_under_affinity_and_stays_under_consistent() -> None:
    assert len(simulate("consistent", 0.8)) == 1
    spread = simulate("affinity", 0.8)
    assert len(spread) > 1
    assert max(spread.values()) < 0.8 * sum(spread.values())


def test_residency_aware_spill_prefers_a_worker_holding_the_model() -> None:
    ring = HashRing(["a", "b", "c", "d"])
    prefs = ring.preference_list("m")
    residency = Residency()
    policy = AffinityPolicy(1.25, PolicyContext(holds=residency.holds))
    busy = {prefs[0]: 10, prefs[1]: 0, prefs[2]: 0, prefs[3]: 0}
    assert policy.choose("m", prefs, busy) == prefs[1], "nobody holds it: the ring successor"
    residency.seen("m", prefs[2], "cpu")
    assert policy.choose("m", prefs, busy) == prefs[2], "the next one that holds it"
    residency.seen("m", prefs[1], "disk")  # loaded there for a request: it holds it now
    assert policy.choose("m", prefs, busy) == prefs[1]
    residency.replace({"m": [prefs[3]]})
    assert policy.choose("m", prefs, busy) == prefs[3], "the index's snapshot replaces what answers told"
    over = {**busy, prefs[3]: 10}
    assert policy.choose("m", prefs, over) == prefs[1], "a holder over its cap is not preferred"
    residency.seen("m", prefs[2], None)  # no X-Model-Source: tells nothing
    assert not residency.holds("m", prefs[2])


def test_a_cold_spill_waits_at_a_home_that_holds_the_model_within_the_slack() -> None:
    """The owner is over its cap and nobody else holds the model: with a slack of 2
    the request stays with the owner (which holds it) until the owner is 2 past its
    cap; a spill to a worker that holds the model is never held back; an owner that
    does not hold it keeps nothing back either."""
    ring = HashRing(["a", "b", "c"])
    prefs = ring.preference_list("m")
    residency = Residency()
    policy = AffinityPolicy(1.0, PolicyContext(holds=residency.holds), cold_spill_slack=2)
    plain = AffinityPolicy(1.0, PolicyContext(holds=residency.holds), cold_spill_slack=0)
    residency.seen("m", prefs[0], "cpu")
    # 3 in flight, all on the owner: cap = ceil(1.0 x 4 / 3) = 2, so the owner is full
    loads = {prefs[0]: 3, prefs[1]: 0, prefs[2]: 0}
    assert plain.choose("m", prefs, loads) == prefs[1], "plain bounded load spills to the successor"
    assert policy.choose("m", prefs, loads) == prefs[0], "3 < cap 2 + slack 2: it waits at the owner"
    # 4 in flight on the owner: cap 2, 4 >= 2 + 2: the cold spill goes ahead
    assert policy.choose("m", prefs, {**loads, prefs[0]: 4}) == prefs[1]
    residency.seen("m", prefs[2], "cpu")
    assert policy.choose("m", prefs, loads) == prefs[2], "a resident spill is never held back"
    residency.replace({})
    assert policy.choose("m", prefs, loads) == prefs[1], "an owner without the model keeps nothing back"
    assert make_policy("affinity", 2.0).cold_spill_slack == DEFAULT_COLD_SPILL_SLACK  # type: ignore[attr-defined]
    # Every candidate at its cap (a fourth worker, not a candidate, counts in the total):
    # the least loaded would be cold, and the slack keeps the request home there too.
    residency.seen("m", prefs[0], "cpu")
    full = {prefs[0]: 5, prefs[1]: 4, prefs[2]: 4, "d": 0}  # cap = ceil(1.0 x 14 / 4) = 4
    assert plain.choose("m", prefs, full) == prefs[1]
    assert policy.choose("m", prefs, full) == prefs[0], "5 < cap 4 + slack 2"


def test_replicas_spread_a_hot_model_over_its_first_workers() -> None:
    ring = HashRing(["a", "b", "c", "d"])
    prefs = ring.preference_list("m")
    policy = AffinityPolicy(1.25, PolicyContext(replicas={"m": 2}))
    idle = dict.fromkeys(prefs, 0)
    assert policy.choose("m", prefs, idle) == prefs[0]
    assert policy.choose("m", prefs, {**idle, prefs[0]: 1}) == prefs[1], "the less loaded replica"
    assert policy.choose("n", ring.preference_list("n"), {**idle}) == ring.preference_list("n")[0]


# health


def test_ejection_backs_off_exponentially_and_tick_readmits() -> None:
    clock = Clock()
    changes: list[str] = []
    book = HealthBook(
        HealthSettings(eject_after=3, ejection_time=10, max_ejection_time=35, jitter=0.1),
        clock,
        random.Random(0),
        on_eject=lambda w, why: changes.append(f"{w}:{why}"),
    )
    book.sync(["a", "b", "c", "d"])
    durations = []
    for _ in range(4):
        book.failure("a")
        book.success("a")  # a success in between resets the count
        assert book.admitted("a")
        for _ in range(3):
            book.failure("a")
        assert not book.admitted("a") and book.state("a") == "ejected"
        until = book.workers["a"].ejected_until
        assert until is not None
        durations.append(until - clock.now)
        clock.now = until - 0.01
        book.tick()
        assert not book.admitted("a")
        book.probe("a", True)
        book.probe("a", True)
        assert not book.admitted("a"), "a passing probe does not cut an ejection short"
        clock.now = until
        book.tick()
        assert book.admitted("a")
    for got, base in zip(durations, (10, 20, 35, 35), strict=True):
        assert base <= got <= base * 1.1
    assert changes == ["a:outlier"] * 4
    clock.now += 36  # admitted for max_ejection_time: the back-off starts again
    for _ in range(3):
        book.failure("a")
    assert book.workers["a"].ejected_until == pytest.approx(clock.now + 10, rel=0.1)


def test_never_more_than_a_quarter_ejected_and_probes_rise_and_fall() -> None:
    book = HealthBook(HealthSettings(eject_after=1, rise=2, fall=3), Clock())
    book.sync([f"w{i}" for i in range(8)])
    for w in list(book.workers):
        book.failure(w)
    assert book.ejected_count() == 2, "max(1, 25% of 8)"
    assert [w for w in book.workers if not book.admitted(w)] == ["w0", "w1"]
    book.probe("w7", False)
    book.probe("w7", False)
    assert book.admitted("w7")
    book.probe("w7", False)
    assert book.state("w7") == "down"
    book.probe("w7", True)
    assert not book.admitted("w7")
    book.probe("w7", True)
    assert book.admitted("w7")


def test_panic_below_half_admitted() -> None:
    book = HealthBook(HealthSettings(fall=1), Clock())
    members = Members(health=book, panic_threshold=0.5)
    members.set_members({w: WorkerAddress(f"http://127.0.0.1:{i}") for i, w in enumerate("abcd", 1)})
    book.probe("a", False)
    assert not members.panic and "a" not in members.candidates("m")
    book.probe("b", False)
    assert not members.panic, "2 of 4 is not below half"
    book.probe("c", False)
    assert members.panic
    owned_by_d = next(m for m in MODELS if members.preference_list(m)[0] == "d")
    owned_by_a = next(m for m in MODELS if members.preference_list(m)[0] == "a")
    assert not members.owner_out(owned_by_d) and members.owner_out(owned_by_a)


# retry budget


def test_retry_budget_has_a_floor_and_a_ratio_over_a_sliding_window() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, floor=1, window=10, clock=clock)
    assert sum(budget.try_retry() for _ in range(20)) == 10, "the floor: 1 a second over 10 s"
    for _ in range(100):
        budget.request()
    assert sum(budget.try_retry() for _ in range(50)) == 20, "plus 20% of requests"
    clock.now += 5
    assert not budget.try_retry()
    clock.now += 5.5
    assert budget.allowed()
    assert budget.retries == 0 and budget.requests == 0, "the window slid past everything"
    assert budget.try_retry()
