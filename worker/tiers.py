"""Byte accounting of one tier (GPU, CPU, disk): pure logic, no I/O, no awaits.

A tier holds resident models (bytes each) and reservations (bytes promised to
loads in flight). ``used + reserved`` never exceeds the budget: a load reserves
its bytes before it starts, and when there is no room the tier's policy names
victims among the models the caller says may go (not in use, not pinned);
``plan`` answers them, or None when even evicting all of them would not be
enough. Also here: what the manager reports outward, the snapshot shapes and
the metrics observer.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from worker.eviction import Candidate, EvictionPolicy

GPU, CPU, DISK, REMOTE = "gpu", "cpu", "disk", "remote"

K = TypeVar("K", bound=Hashable)


class BudgetExceeded(AssertionError):
    """An accounting bug: a tier was asked to go over its budget."""


@dataclass(slots=True)
class Tier(Generic[K]):
    name: str
    budget: int
    policy: EvictionPolicy
    sizes: dict[K, int] = field(default_factory=dict)  # resident
    reserved: dict[K, int] = field(default_factory=dict)  # loads in flight

    @property
    def used(self) -> int:
        return sum(self.sizes.values())

    @property
    def reserved_bytes(self) -> int:
        return sum(self.reserved.values())

    @property
    def free(self) -> int:
        return self.budget - self.used - self.reserved_bytes

    def fits_at_all(self, size: int) -> bool:
        return size <= self.budget

    def plan(self, size: int, evictable: Callable[[K], bool]) -> list[K] | None:
        """Victims whose eviction leaves room for ``size`` bytes ([] when it fits
        already), or None when evicting everything evictable would not do."""
        if size > self.budget:
            return None
        needed = size - self.free
        if needed <= 0:
            return []
        chosen, freed = [], 0
        for key in self.eviction_order(evictable):
            if freed >= needed:
                break
            chosen.append(key)
            freed += self.sizes[key]
        return chosen if freed >= needed else None

    def eviction_order(self, evictable: Callable[[K], bool]) -> list[K]:
        """Every resident model ``evictable`` allows, least worth keeping first (the policy's order)."""
        allowed: dict[Hashable, K] = {k: k for k in self.sizes if evictable(k)}
        candidates = [Candidate(k, self.sizes[k]) for k in allowed.values()]
        return [allowed[k] for k in self.policy.victims(candidates, sum(c.size for c in candidates)) if k in allowed]

    def reserve(self, key: K, size: int) -> None:
        if size > self.free:
            raise BudgetExceeded(f"{self.name}: reserving {size} bytes with {self.free} free")
        self.reserved[key] = self.reserved.get(key, 0) + size

    def cancel(self, key: K) -> None:
        self.reserved.pop(key, None)

    def commit(self, key: K, cost: float) -> None:
        """A reservation becomes a resident model."""
        self.sizes[key] = self.reserved.pop(key)
        self.policy.admit(key, self.sizes[key], cost)

    def add(self, key: K, size: int, cost: float) -> None:
        """A model moves in without a reservation (demoted from the tier above)."""
        if size > self.free:
            raise BudgetExceeded(f"{self.name}: adding {size} bytes with {self.free} free")
        self.sizes[key] = size
        self.policy.admit(key, size, cost)

    def remove(self, key: K, evicted: bool) -> int:
        self.policy.forget(key, evicted)
        return self.sizes.pop(key)

    def touch(self, key: K) -> None:
        self.policy.touch(key)


class MemoryObserver(Protocol):
    """Where the manager reports to (metrics): called on the event loop."""

    def loaded(self, key: tuple[str, str], tier: str, seconds: float) -> None:
        """Model ``key`` was paged in from ``tier`` (cpu, disk or remote) in ``seconds``."""
        ...

    def evicted(self, key: tuple[str, str], tier: str) -> None:
        """Model ``key`` left ``tier`` (gpu, cpu or disk), demoted or dropped."""
        ...


class NullObserver:
    def loaded(self, key: tuple[str, str], tier: str, seconds: float) -> None:
        pass

    def evicted(self, key: tuple[str, str], tier: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class ResidentSnapshot:
    name: str
    version: str
    bytes: int
    refs: int
    pinned: bool
    loading: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "bytes": self.bytes,
            "refs": self.refs,
            "pinned": self.pinned,
            "loading": self.loading,
        }


@dataclass(frozen=True, slots=True)
class TierSnapshot:
    tier: str
    budget: int
    used: int
    reserved: int
    models: tuple[ResidentSnapshot, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "budget": self.budget,
            "used": self.used,
            "reserved": self.reserved,
            "models": [m.to_json() for m in self.models],
        }


def snapshot_of(
    tier: Tier[tuple[str, str]], refs: Callable[[tuple[str, str]], int], pinned: Callable[[tuple[str, str]], bool]
) -> TierSnapshot:
    """A tier's view for /admin/memory: resident models, then loads in flight."""
    models = [ResidentSnapshot(k[0], k[1], size, refs(k), pinned(k)) for k, size in sorted(tier.sizes.items())]
    models += [ResidentSnapshot(k[0], k[1], size, 0, pinned(k), True) for k, size in sorted(tier.reserved.items())]
    return TierSnapshot(tier.name, tier.budget, tier.used, tier.reserved_bytes, tuple(models))


@dataclass(frozen=True, slots=True)
class MemorySnapshot:
    policy: str
    tiers: tuple[TierSnapshot, ...]  # top down: gpu (when there is one), cpu, disk (when there is a cache)
    remote: str | None  # the store's URL, when there is one

    def tier(self, name: str) -> TierSnapshot | None:
        return next((t for t in self.tiers if t.tier == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "tiers": [t.to_json() for t in self.tiers], "remote": self.remote}
