"""The consistent-hash ring of workers: a typed wrapper over uhashring.

uhashring places virtual nodes by md5 of ``"<worker name>-<i>"`` for
i < vnodes, so workers need stable ids (never Python's randomised ``hash()``).
Two balancers given the same members (and capacities) build the same ring.

Capacity weighting: a worker's virtual-node count is ``VNODES x capacity /
smallest capacity on the ring`` (at most ``MAX_WEIGHT`` times ``VNODES``), so
a worker with twice the memory owns about twice the models. Because a
worker's points are a prefix of one sequence, changing its weight adds or
drops only its last points: only the models on those points move. Equal
capacities give every worker ``VNODES`` points, the plain ring, where a worker
leaving or joining moves only its own models. (When the smallest capacity
itself leaves or a smaller one joins, every weight is rescaled: the moves are
bounded by the change of ratio, since points are prefixes.)

Membership changes are applied as diffs; a model's preference list (every
worker, in ring order from the model's hash) is cached until the ring next
changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from uhashring import HashRing as _UHashRing

from protocol.errors import Unavailable

MAX_CACHED_LISTS = 65536
VNODES = 160
MAX_WEIGHT = 16.0


def vnode_counts(capacities: Mapping[str, float]) -> dict[str, int]:
    """Virtual nodes per worker, in proportion to capacity (the smallest gets ``VNODES``)."""
    positive = [c for c in capacities.values() if c > 0]
    smallest = min(positive) if positive else 1.0
    return {node: VNODES if c <= 0 else round(VNODES * min(c / smallest, MAX_WEIGHT)) for node, c in capacities.items()}


class HashRing:
    def __init__(self, nodes: Iterable[str] = (), capacities: Mapping[str, float] | None = None) -> None:
        self._ring = _UHashRing(nodes=[])
        self._vnodes: dict[str, int] = {}
        self._preferences: dict[str, tuple[str, ...]] = {}
        weights = dict(capacities or {})
        self.set_nodes({n: weights.get(n, 0.0) for n in sorted(set(nodes) | set(weights))})

    @property
    def nodes(self) -> frozenset[str]:
        return frozenset(self._vnodes)

    def vnodes(self, node: str) -> int:
        return self._vnodes.get(node, 0)

    def set_nodes(self, capacities: Mapping[str, float]) -> None:
        """Make the ring hold exactly these nodes with these capacities (0: unknown,
        counted as the smallest), changing only what differs."""
        wanted = vnode_counts(capacities)
        changed = False
        for node in [n for n in self._vnodes if n not in wanted]:
            self._ring.remove_node(node)
            del self._vnodes[node]
            changed = True
        for node in sorted(wanted):
            if self._vnodes.get(node) != wanted[node]:
                self._ring.add_node(node, {"vnodes": wanted[node], "weight": 1})
                self._vnodes[node] = wanted[node]
                changed = True
        if changed:
            self._preferences.clear()

    def add(self, node: str, vnodes: int = VNODES) -> None:
        if node not in self._vnodes:
            self._ring.add_node(node, {"vnodes": vnodes, "weight": 1})
            self._vnodes[node] = vnodes
            self._preferences.clear()

    def remove(self, node: str) -> None:
        if node in self._vnodes:
            self._ring.remove_node(node)
            del self._vnodes[node]
            self._preferences.clear()

    def preference_list(self, key: str) -> tuple[str, ...]:
        """Every node, in ring order starting at the key's owner."""
        cached = self._preferences.get(key)
        if cached is not None:
            return cached
        if not self._vnodes:
            raise Unavailable("no worker is available")
        order = tuple(n for n in self._ring.iterate_nodes(key, distinct=True) if n is not None)
        if len(self._preferences) >= MAX_CACHED_LISTS:
            self._preferences.clear()
        self._preferences[key] = order
        return order
