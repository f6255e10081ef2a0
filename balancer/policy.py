"""Routing policies: ``choose(model, candidates, loads) -> worker id``.

``candidates`` is the model's preference list (ring order, healthy workers not
yet tried for this request); ``loads`` maps every healthy worker to its
in-flight count. Policies are small, pure and chosen by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol


class RoutingPolicy(Protocol):
    name: str

    def choose(self, model: str, candidates: Sequence[str], loads: Mapping[str, int]) -> str: ...


class ConsistentPolicy:
    """Pure consistent hashing: always the first candidate. A hot model can
    overload its owner; this is the baseline the bounded policy improves on."""

    name = "consistent"

    def choose(self, model: str, candidates: Sequence[str], loads: Mapping[str, int]) -> str:
        return candidates[0]


class BoundedLoadPolicy:
    """Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam
    2016; HAProxy's hash-balance-factor): take the first candidate in ring
    order whose in-flight count is below ceil((1+e) x (total in-flight + 1) /
    healthy workers), counting the request being placed. Spill walks on along
    the ring, so a hot model's overflow lands on the same next workers each time
    (sticky spill). Failure mode: with e large it degrades to ``consistent``;
    with e near 0 it degrades towards least-loaded and affinity is lost."""

    name = "affinity"

    def __init__(self, balance_factor: float = 1.25) -> None:
        self.balance_factor = balance_factor

    def cap(self, loads: Mapping[str, int]) -> int:
        return math.ceil(self.balance_factor * (sum(loads.values()) + 1) / max(len(loads), 1))

    def choose(self, model: str, candidates: Sequence[str], loads: Mapping[str, int]) -> str:
        cap = self.cap(loads)
        for worker in candidates:
            if loads.get(worker, 0) < cap:
                return worker
        return min(candidates, key=lambda w: loads.get(w, 0))


def make_policy(name: str, balance_factor: float) -> RoutingPolicy:
    if name == "affinity":
        return BoundedLoadPolicy(balance_factor)
    if name == "consistent":
        return ConsistentPolicy()
    raise ValueError(f"unknown routing policy {name!r}")
