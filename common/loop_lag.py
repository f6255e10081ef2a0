"""How late the event loop runs: the lag a short timer sees, sampled all the time.

A server on one event loop answers nothing while a callback runs; this monitor
makes that visible. Every ``interval`` it sleeps and measures how much later
than asked it woke up. ``affinity_event_loop_lag_seconds`` is the histogram of
those lags and ``affinity_event_loop_lag_max_seconds`` the largest since the
process started (what the cache benchmark reads while large bodies arrive).
A thread holding the GIL delays the loop too, and shows up here as well.

On a busy machine part of a lag is only the loop's thread waiting for a CPU
(other processes ran), which no design of ours removes. Linux counts that wait
per thread (``/proc/thread-self/schedstat``, its second field), so each sample
is also recorded without it: ``affinity_event_loop_own_lag_seconds`` is the lag
the process caused itself (its callbacks, a thread holding the GIL), and
``affinity_event_loop_own_lag_max_seconds`` its largest. Where the file is
missing both say the same.
"""

from __future__ import annotations

import asyncio

from common.metrics import CallbackGauge, Registry

LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
SCHEDSTAT = "/proc/thread-self/schedstat"


def cpu_wait() -> float | None:
    """Seconds this thread has spent waiting for a CPU (runnable, not running), or None."""
    try:
        with open(SCHEDSTAT, "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


class LoopLag:
    def __init__(self, registry: Registry, interval: float = 0.01) -> None:
        self.interval = interval
        self.max = 0.0
        self.own_max = 0.0
        self._histogram = registry.histogram(
            "affinity_event_loop_lag_seconds", "How late a short timer fires on the event loop.", (), LAG_BUCKETS
        ).labels()
        self._own = registry.histogram(
            "affinity_event_loop_own_lag_seconds",
            "The event loop's lag less the time its thread waited for a CPU: what the process caused itself.",
            (),
            LAG_BUCKETS,
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
        registry.add(
            CallbackGauge(
                "affinity_event_loop_own_lag_max_seconds",
                "The largest event-loop lag the process caused itself (its CPU waits taken out).",
                [],
                lambda: {(): self.own_max},
                merge="max",
            )
        )

    def observe(self, lag: float, waited: float) -> None:
        """One sample: the timer's lag and how long the loop's thread waited for a CPU meanwhile."""
        own = max(0.0, lag - waited)
        self._histogram.observe(lag)
        self._own.observe(own)
        self.max = max(self.max, lag)
        self.own_max = max(self.own_max, own)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        waited_before = cpu_wait()  # one read a sample: each sample's end is the next one's start
        while True:
            asked = loop.time()
            await asyncio.sleep(self.interval)
            lag = max(0.0, loop.time() - asked - self.interval)
            waited_after = cpu_wait()
            waited = 0.0 if waited_before is None or waited_after is None else waited_after - waited_before
            self.observe(lag, waited)
            waited_before = waited_after
