"""An in-process LRU bounded in bytes."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Protocol, TypeVar


class Sized(Protocol):
    @property
    def size(self) -> int: ...


V = TypeVar("V", bound=Sized)


class ByteLRU(Generic[V]):
    """Least-recently-used map whose values' ``size`` never sums past ``capacity``.

    A value larger than the whole capacity is not stored at all.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._items: OrderedDict[str, V] = OrderedDict()

    def get(self, key: str) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: V) -> bool:
        size = value.size
        if size > self.capacity:
            return False
        old = self._items.pop(key, None)
        if old is not None:
            self.used -= old.size
        while self._items and self.used + size > self.capacity:
            _, evicted = self._items.popitem(last=False)
            self.used -= evicted.size
        self._items[key] = value
        self.used += size
        return True

    def pop(self, key: str) -> V | None:
        value = self._items.pop(key, None)
        if value is not None:
            self.used -= value.size
        return value
