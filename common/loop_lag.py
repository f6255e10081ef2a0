"""How late the event loop runs: the lag a short timer sees, sampled all the time.

A server on one event loop answers nothing while a callback runs; this monitor
makes that visible. Every ``interval`` it sleeps and measures how much later
than asked it woke up. ``affinity_event_loop_lag_seconds`` is the histogram of
those lags and ``affinity_event_loop_lag_max_seconds`` the largest since the
process started (what the cache benchmark reads while large bodies arrive).
A thread holding the GIL delays the loop too, and shows up here as well.
"""

from __future__ import annotations

import asyncio

from common.metrics import CallbackGauge, Registry

LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class LoopLag:
    def __init__(self, registry: Registry, interval: float = 0.01) -> None:
        self.interval = interval
        self.max = 0.0
        self._histogram = registry.histogram(
            "affinity_event_loop_lag_seconds", "How late a short timer fires on the event loop.", (), LAG_BUCKETS
        ).labels()
        registry.add(
            CallbackGauge(
                "affinity_event_loop_lag_max_seconds",
                "The largest event-loop lag seen since the process started.",
                [],
                lambda: {(): self.max},
                merge="max",
            )
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(self.interval)
            lag = max(0.0, loop.time() - asked - self.interval)
            self._histogram.observe(lag)
            self.max = max(self.max, lag)
