"""Helpers for the memory manager's tests: a pager that counts real loads, a
scripted clock for load costs, and a runner that checks no task is left behind."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from worker.device import Device
from worker.paging import Key, TorchPager
from worker.runner import LoadedModel

T = TypeVar("T")

MIB = 1 << 20


def run(main: Callable[[], Coroutine[Any, Any, T]], timeout: float = 60) -> T:
    """Run ``main`` on a fresh loop; fail if it leaves a task running."""

    async def checked() -> T:
        result = await asyncio.wait_for(main(), timeout)
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not left, f"tasks left running: {left}"
        return result

    return asyncio.run(checked())


def repository(root: Path) -> Callable[[Key], Path | None]:
    """The read-only repository's lookup, as the service gives it (a scanned view)."""
    present = {(p.parent.name, p.name): p for p in root.glob("*/*") if p.is_dir()}
    return present.get


class ScriptedClock:
    """A clock that only moves when a load says it took time (GDS costs, exactly)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


class CountingPager(TorchPager):
    """The real pager, counting its loads and device copies (and optionally
    charging a scripted cost to a clock, or waiting on a gate before loading)."""

    def __init__(self, clock: ScriptedClock | None = None, costs: dict[str, float] | None = None) -> None:
        self.loads: Counter[Key] = Counter()
        self.copies: Counter[Key] = Counter()
        self.clock = clock
        self.costs = costs or {}
        self.gate: threading.Event | None = None

    def load(self, key: Key, directory: Path) -> LoadedModel:
        if self.gate is not None:
            assert self.gate.wait(30)
        self.loads[key] += 1
        model = super().load(key, directory)
        if self.clock is not None:
            self.clock.advance(self.costs.get(key[0], 0.001))
        return model

    def to_device(self, key: Key, model: LoadedModel, device: Device) -> LoadedModel:
        self.copies[key] += 1
        return super().to_device(key, model, device)


def sizes(root: Path) -> dict[str, int]:
    """Each zoo model's tensor bytes, as the manager will charge them."""
    pager = TorchPager()
    return {
        p.parent.name: pager.weights_bytes((p.parent.name, "1"), p)
        for p in root.glob("*/1")
        if p.parent.name != "broken"
    }
