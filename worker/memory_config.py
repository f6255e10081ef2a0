"""The memory manager's settings (``worker.memory``), checked when made."""

from __future__ import annotations

from dataclasses import dataclass

from worker.eviction import POLICIES
from worker.paging import Key


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    cpu_budget: int
    gpu_budget: int = 0  # 0: no GPU tier, even with a device
    eviction: str = "lru"
    max_loads: int = 1
    wait_timeout: float = 30.0  # seconds an acquire waits for room held by models in use
    pinned: frozenset[Key] = frozenset()

    def __post_init__(self) -> None:
        if self.cpu_budget <= 0 or self.gpu_budget < 0:
            raise ValueError("the CPU budget must be positive and the GPU budget not negative")
        if self.eviction not in POLICIES:
            raise ValueError(f"unknown eviction policy {self.eviction!r}; known: {', '.join(POLICIES)}")
        if self.max_loads < 1 or self.wait_timeout < 0:
            raise ValueError("max loads must be at least 1 and the wait timeout not negative")
