"""An in-process LRU bounded in bytes.

The bound is on memory, not on payload: each item is counted as its value's
``size`` (the value's own footprint, as it reports it) plus its key's length
plus ``item_overhead`` (the map's node, the key object, the bookkeeping), so
the process's memory follows the configured capacity, not a fraction of it.
A value whose footprint grows after it was stored (an answer memoising
another rendering of itself) is counted again with ``recount``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Protocol, TypeVar


class Sized(Protocol):
    @property
    def size(self) -> int: ...


V = TypeVar("V", bound=Sized)


class ByteLRU(Generic[V]):
    """Least-recently-used map whose items' counted bytes never sum past ``capacity``.

    An item larger than the whole capacity is not stored at all.
    """

    def __init__(self, capacity: int, item_overhead: int = 0) -> None:
        self.capacity = capacity
        self.item_overhead = item_overhead
        self.used = 0
        self._items: OrderedDict[str, V] = OrderedDict()
        self._counted: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def _cost(self, key: str, value: V) -> int:
        return value.size + len(key) + self.item_overhead

    def get(self, key: str) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def _evict_for(self, size: int, keep: str | None = None) -> None:
        while self._items and self.used + size > self.capacity:
            oldest = next(iter(self._items))
            if oldest == keep:
                if len(self._items) == 1:
                    return
                self._items.move_to_end(oldest)
                continue
            self._items.popitem(last=False)
            self.used -= self._counted.pop(oldest)

    def put(self, key: str, value: V) -> bool:
        size = self._cost(key, value)
        self.pop(key)  # a new value for the key replaces the old, stored or not
        if size > self.capacity:
            return False
        self._evict_for(size)
        self._items[key] = value
        self._counted[key] = size
        self.used += size
        return True

    def recount(self, key: str) -> None:
        """Count the item again (its value grew or shrank since it was stored); other
        items make room for it, least recent first, and it goes itself if it no
        longer fits at all."""
        value = self._items.get(key)
        if value is None:
            return
        size = self._cost(key, value)
        before = self._counted[key]
        if size == before:
            return
        if size > self.capacity:
            self.pop(key)
            return
        self.used -= before
        self._evict_for(size, keep=key)
        self._counted[key] = size
        self.used += size

    def pop(self, key: str) -> V | None:
        value = self._items.pop(key, None)
        if value is not None:
            self.used -= self._counted.pop(key)
        return value
