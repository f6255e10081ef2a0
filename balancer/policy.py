"""Routing policies: ``choose(model, candidates, loads) -> worker id``.

``candidates`` is the model's preference list: admitted (healthy, not
draining) workers not yet tried for this request, in ring order from the
model's hash; ``loads`` maps every admitted worker to its in-flight count.
Policies are small, pure and chosen by name (``--policy``); what a policy
needs beyond its arguments (capacity shares, residency, replica counts) it is
given at construction as live read-only views that the balancer updates in
place.

    consistent    the ring owner, always (the baseline)
    affinity      bounded load over the ring, hot-model replicas, residency-aware spill
    round-robin   each worker in turn
    least-loaded  the fewest in flight per unit of capacity
    random        uniform
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

POLICIES = ("affinity", "consistent", "round-robin", "least-loaded", "random")
SPILL_WINDOW = 3  # how many spill candidates past the home set are searched for a resident one
# The bounded-load factor (1+e). 2, not HAProxy's customary 1.25: a spill to a worker
# that does not hold the model costs a load (and an eviction there), and with few
# requests in flight 1.25 caps every worker at one or two, so ordinary bursts spilled.
# Measured with `affinity bench routing` (docs/benchmarks.md): 1.7-4.3x fewer loads, the
# same tails under skew.
DEFAULT_BALANCE_FACTOR = 2.0
# A spill to a worker that does not hold the model costs a load there (and an eviction);
# while a home worker that holds it has fewer than its cap plus this many requests in
# flight, the request waits there instead. 0: spill as plain bounded load does. A slack in
# requests, not a factor: with few workers any factor times the balance factor reaches
# the worker count, and a cap of a share of one bounds nothing.
DEFAULT_COLD_SPILL_SLACK = 4


class RoutingPolicy(Protocol):
    name: str

    def choose(self, model: str, candidates: Sequence[str], loads: Mapping[str, int]) -> str: ...


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """Live views a policy may read: each worker's share of the admitted capacity
    (absent: an equal share), which workers hold which model in memory, and each
    hot model's replica count (absent: 1)."""

    shares: Mapping[str, float] = field(default_factory=dict)
    holds: Callable[[str, str], bool] = lambda model, worker: False
    replicas: Mapping[str, int] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)


class ConsistentPolicy:
    """Pure consistent hashing: always the first candidate. A hot model can
    overload its owner; this is the baseline the bounded policy improves on."""

    name = "consistent"

    def choose(self, model: str, candidates: Sequence[str], loads: Mapping[str, int]) -> str:
        return candidates[0]


class RoundRobinPolicy:
    """Each request to the next worker: ignores models, so every worker ends up
    loading every model (the baseline for the cost of no affinity)."""

    name = "round-robin"

    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, model: str, candidates: Sequence[str], loads: Mapping[str, int]) -> str:
        return candidates[next(self._turn) % len(candidates)]


class RandomPolicy:
    name = "random"

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, model: str, candidates: Sequence[str], loads: Mapping[str, int]) -> str:
        return candidates[self._rng.randrange(len(candidates))]


class LeastLoadedPolicy:
    """The candidate with the fewest requests in flight per unit of capacity; ties
    go to ring order (so an idle cluster still keeps some affinity)."""

    name = "least-loaded"

    def __init__(self, shares: Mapping[str, float]) -> None:
        self._shares = shares

    def choose(self, model: str, candidates: Sequence[str], loads: Mapping[str, int]) -> str:
        shares = self._shares
        return min(candidates, key=lambda w: loads.get(w, 0) / (shares.get(w) or 1.0))


class BoundedLoadPolicy:
    """Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam
    2016; HAProxy's hash-balance-factor): a worker may take the request while its
    in-flight count is below ceil((1+e) x (total in-flight + 1) x its share of the
    admitted capacity), counting the request being placed. The model's home (its
    owner) takes it when under its cap; otherwise ``spill`` walks on along the
    ring, so a hot model's overflow lands on the same next workers each time
    (sticky spill). When every candidate is at its cap, the least loaded one.
    Failure mode: with e large it degrades to ``consistent``; with e near 0 it
    degrades towards least-loaded and affinity is lost."""

    name = "bounded"

    def __init__(
        self,
        balance_factor: float = DEFAULT_BALANCE_FACTOR,
        context: PolicyContext | None = None,
        cold_spill_slack: int = DEFAULT_COLD_SPILL_SLACK,
    ) -> None:
        self.balance_factor = balance_factor
        self.context = context or PolicyContext()
        self.cold_spill_slack = cold_spill_slack

    def share(self, worker: str, loads: Mapping[str, int]) -> float:
        return self.context.shares.get(worker) or 1.0 / max(len(loads), 1)

    def cap(self, loads: Mapping[str, int], worker: str | None = None) -> int:
        """The cap of ``worker`` (of an equal-share worker when None)."""
        share = self.share(worker, loads) if worker is not None else 1.0 / max(len(loads), 1)
        return math.ceil(self.balance_factor * (sum(loads.values()) + 1) * share)

    def home(self, model: str, candidates: Sequence[str]) -> Sequence[str]:
        """The workers a model belongs on: its owner."""
        return candidates[:1]

    def spill(self, model: str, rest: Sequence[str], fits: Callable[[str], bool]) -> str | None:
        """Where the request goes when its home is full: the next worker in ring order under its cap."""
        return next((w for w in rest if fits(w)), None)

    def keep_home(
        self, model: str, home: Sequence[str], spill_to: str, loads: Mapping[str, int], cap: Callable[[str], int]
    ) -> str:
        """The last word on a spill (plain bounded load: it stands)."""
        return spill_to

    def choose(self, model: str, candidates: Sequence[str], loads: Mapping[str, int]) -> str:
        scale = self.balance_factor * (sum(loads.values()) + 1)
        equal = 1.0 / (len(loads) or 1)
        shares = self.context.shares
        home = self.home(model, candidates)
        if len(home) == 1:  # the common case, without a closure: the owner under its cap
            owner = home[0]
            if loads.get(owner, 0) < math.ceil(scale * (shares.get(owner) or equal)):
                return owner

        def cap(worker: str) -> int:
            return math.ceil(scale * (shares.get(worker) or equal))

        def room(worker: str) -> float:
            """Cap minus load: positive when the worker may take the request."""
            return cap(worker) - loads.get(worker, 0)

        if len(home) > 1:
            best = max(home, key=room)  # the first in ring order among equals
            if room(best) > 0:
                return best
        chosen = self.spill(model, candidates[len(home) :], lambda w: room(w) > 0)
        if chosen is None:  # every candidate at its cap: the least loaded
            chosen = min(candidates, key=lambda w: loads.get(w, 0) / (shares.get(w) or equal))
            if chosen in home:
                return chosen
        return self.keep_home(model, home, chosen, loads, cap) if self.cold_spill_slack > 0 else chosen


class ReplicasMixin:
    """Hot-model replicas: a model's home is its first ``replicas[model]`` workers
    in ring order (1 unless the replica scaler grew it), and the least loaded of
    them under its cap takes the request. A cold model stays on its owner."""

    context: PolicyContext

    def home(self, model: str, candidates: Sequence[str]) -> Sequence[str]:
        return candidates[: self.context.replicas.get(model, 1)]


class ResidentSpillMixin:
    """Residency-aware spill: among the first ``SPILL_WINDOW`` workers past the home
    set that are under their cap, prefer one that already holds the model in
    memory, so a spill costs a queue wait instead of a cold load; with none, the
    plain ring order, unless a home worker that holds the model is under its cap
    plus ``cold_spill_slack`` (``keep_home``). Ray Serve's multiplexed routing
    prefers resident replicas but drops consistent hashing; this keeps both."""

    context: PolicyContext
    cold_spill_slack: int

    def spill(self, model: str, rest: Sequence[str], fits: Callable[[str], bool]) -> str | None:
        holds = self.context.holds
        window = []
        for worker in rest:
            if fits(worker):
                if holds(model, worker):
                    return worker
                window.append(worker)
                if len(window) == SPILL_WINDOW:
                    break
        return window[0] if window else None

    def keep_home(
        self, model: str, home: Sequence[str], spill_to: str, loads: Mapping[str, int], cap: Callable[[str], int]
    ) -> str:
        """A cold spill (its target lacks the model) gives way to a home worker that
        holds the model while that one's load is under its cap plus
        ``cold_spill_slack``: a short queue where the model is beats a load (and an
        eviction) where it is not. With none, the spill stands."""
        holds = self.context.holds
        if holds(model, spill_to):
            return spill_to
        best, best_room = spill_to, 0.0
        for worker in home:
            if holds(model, worker):
                cold_room = cap(worker) + self.cold_spill_slack - loads.get(worker, 0)
                if cold_room > best_room:
                    best, best_room = worker, cold_room
        return best


class AffinityPolicy(ResidentSpillMixin, ReplicasMixin, BoundedLoadPolicy):
    """The default: bounded load over the capacity-weighted ring, with hot-model
    replicas and residency-aware spill."""

    name = "affinity"


def make_policy(
    name: str,
    balance_factor: float,
    context: PolicyContext | None = None,
    cold_spill_slack: int = DEFAULT_COLD_SPILL_SLACK,
) -> RoutingPolicy:
    context = context or PolicyContext()
    if name == "affinity":
        return AffinityPolicy(balance_factor, context, cold_spill_slack)
    if name == "consistent":
        return ConsistentPolicy()
    if name == "round-robin":
        return RoundRobinPolicy()
    if name == "least-loaded":
        return LeastLoadedPolicy(context.shares)
    if name == "random":
        return RandomPolicy(context.rng)
    raise ValueError(f"unknown routing policy {name!r}; choose from {', '.join(POLICIES)}")
