"""The consistent-hash ring of workers: a typed wrapper over uhashring.

uhashring places 160 virtual nodes per worker by md5 of the worker's *name*,
so workers need stable ids (never Python's randomised ``hash()``). Two
balancers given the same members build the same ring. Membership changes are
applied as diffs; a model's preference list (every worker, in ring order from
the model's hash) is cached until the membership next changes.
"""

from __future__ import annotations

from collections.abc import Iterable

from uhashring import HashRing as _UHashRing

from protocol.errors import Unavailable

MAX_CACHED_LISTS = 65536


class HashRing:
    def __init__(self, nodes: Iterable[str] = ()) -> None:
        self._ring = _UHashRing(nodes=sorted(set(nodes)))
        self._nodes: set[str] = set(self._ring.get_nodes())
        self._preferences: dict[str, tuple[str, ...]] = {}

    def add(self, node: str) -> None:
        if node not in self._nodes:
            self._ring.add_node(node)
            self._nodes.add(node)
            self._preferences.clear()

    def remove(self, node: str) -> None:
        if node in self._nodes:
            self._ring.remove_node(node)
            self._nodes.discard(node)
            self._preferences.clear()

    def preference_list(self, key: str) -> tuple[str, ...]:
        """Every node, in ring order starting at the key's owner."""
        cached = self._preferences.get(key)
        if cached is not None:
            return cached
        if not self._nodes:
            raise Unavailable("no worker is available")
        order = tuple(n for n in self._ring.iterate_nodes(key, distinct=True) if n is not None)
        if len(self._preferences) >= MAX_CACHED_LISTS:
            self._preferences.clear()
        self._preferences[key] = order
        return order
