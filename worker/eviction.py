"""Eviction policies: which resident models to give up to free ``needed_bytes``.

Each tier keeps its own policy instance, chosen by name (``--eviction lru|gds``).
The manager tells it when a model enters the tier (``admit``, with the measured
cost of bringing it back), is used (``touch``) and leaves (``forget``); when a
tier needs room it passes the models it may evict (not in use, not pinned) to
``victims``, which answers the order to evict them in, stopping once enough
bytes are freed. Policies hold no bytes and do no I/O, so they are tested
directly on scripted traces.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

# A load measured at zero seconds would give a zero credit; keep costs positive.
MIN_COST_SECONDS = 1e-6


@dataclass(frozen=True, slots=True)
class Candidate:
    key: Hashable
    size: int


class EvictionPolicy(Protocol):
    name: str

    def admit(self, key: Hashable, size: int, cost: float) -> None: ...

    def touch(self, key: Hashable) -> None: ...

    def forget(self, key: Hashable, evicted: bool) -> None: ...

    def victims(self, resident: Sequence[Candidate], needed_bytes: int) -> list[Hashable]: ...


def _take(ordered: Sequence[Candidate], needed_bytes: int) -> list[Hashable]:
    chosen, freed = [], 0
    for candidate in ordered:
        if freed >= needed_bytes:
            break
        chosen.append(candidate.key)
        freed += candidate.size
    return chosen


class LeastRecentlyUsed:
    """Evict the model used longest ago. Cheap and predictable; blind to size and
    reload cost, so one large cold scan can flush many small hot models."""

    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[Hashable, None] = OrderedDict()

    def admit(self, key: Hashable, size: int, cost: float) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def touch(self, key: Hashable) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def forget(self, key: Hashable, evicted: bool) -> None:
        self._order.pop(key, None)

    def victims(self, resident: Sequence[Candidate], needed_bytes: int) -> list[Hashable]:
        by_key = {c.key: c for c in resident}
        ordered = [by_key[k] for k in self._order if k in by_key]
        return _take(ordered, needed_bytes)


class GreedyDualSize:
    """GreedyDual-Size (Cao and Irani, 1997): a model's credit is
    H = L + reload cost / size, set when it enters the tier and on every use;
    evict the lowest H first, and raise L to the evicted model's H, so models not
    used since L passed their credit age out. Cheap-to-reload large models go
    first, expensive small ones stay. The failure mode: a model whose measured
    cost was an outlier (a cold disk) keeps an inflated credit until it is evicted once.
    """

    name = "gds"

    def __init__(self) -> None:
        self._inflation = 0.0  # L
        self._credit: dict[Hashable, float] = {}  # H
        self._ratio: dict[Hashable, float] = {}  # cost / size
        self._tick: dict[Hashable, int] = {}  # recency, to order equal credits
        self._clock = 0

    @property
    def inflation(self) -> float:
        return self._inflation

    def credit(self, key: Hashable) -> float:
        return self._credit[key]

    def admit(self, key: Hashable, size: int, cost: float) -> None:
        self._ratio[key] = max(cost, MIN_COST_SECONDS) / max(size, 1)
        self.touch(key)

    def touch(self, key: Hashable) -> None:
        ratio = self._ratio.get(key)
        if ratio is None:
            return
        self._clock += 1
        self._credit[key] = self._inflation + ratio
        self._tick[key] = self._clock

    def forget(self, key: Hashable, evicted: bool) -> None:
        credit = self._credit.pop(key, None)
        self._ratio.pop(key, None)
        self._tick.pop(key, None)
        if evicted and credit is not None:
            self._inflation = max(self._inflation, credit)

    def victims(self, resident: Sequence[Candidate], needed_bytes: int) -> list[Hashable]:
        known = [c for c in resident if c.key in self._credit]
        ordered = sorted(known, key=lambda c: (self._credit[c.key], self._tick[c.key]))
        return _take(ordered, needed_bytes)


POLICIES: dict[str, type[LeastRecentlyUsed] | type[GreedyDualSize]] = {
    LeastRecentlyUsed.name: LeastRecentlyUsed,
    GreedyDualSize.name: GreedyDualSize,
}


def make_policy(name: str) -> EvictionPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r}; known: {', '.join(POLICIES)}") from None
