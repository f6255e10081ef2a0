"""The event-loop lag monitor: a callback that blocks the loop shows as the
process's own lag; time the loop's thread spent waiting for a CPU is told apart
(Linux schedstat), so a benchmark on a busy machine can judge the design, not
the machine."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from common.loop_lag import LoopLag, cpu_wait
from common.metrics import Registry


def test_own_lag_is_the_lag_less_the_wait_for_a_cpu() -> None:
    lag = LoopLag(Registry())
    lag.observe(0.008, 0.006)
    lag.observe(0.003, 0.010)  # waited more than it lagged: none of it was ours
    assert lag.max == 0.008
    assert lag.own_max == pytest.approx(0.002)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="schedstat is Linux's")
def test_a_blocking_callback_is_the_processs_own_lag() -> None:
    assert isinstance(cpu_wait(), float)
    registry = Registry()
    monitor = LoopLag(registry, interval=0.005)

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(monitor.run())
        await asyncio.sleep(0.05)
        deadline = time.thread_time() + 0.06
        while time.thread_time() < deadline:  # holds the loop for 60 ms of CPU, however long that takes
            pass
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(main())
    assert monitor.own_max >= 0.04, "the busy callback counted as the loop's own, waits for a CPU taken out"
    text = registry.render().decode()
    assert "affinity_event_loop_own_lag_seconds_bucket" in text
    assert "affinity_event_loop_own_lag_max_seconds" in text
