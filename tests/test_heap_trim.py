"""Freed heap memory goes back to the system: the trimmer gives back what glibc
kept after a burst of allocations (the soak's worker steps), trims only after
growth, and says what it did in its metrics."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from common import heap_trim
from common.heap_trim import HeapTrimmer, anonymous_bytes, libc_malloc_trim
from common.metrics import Registry
from tests.metrics_text import metric_sum

needs_glibc = pytest.mark.skipif(
    libc_malloc_trim() is None or anonymous_bytes() is None, reason="glibc's malloc_trim and /proc (Linux, glibc)"
)

# A burst in a fresh interpreter: ~100 MB of 2,000-byte blocks (malloc's, past pymalloc's
# 512 bytes), then all freed but every 64th, so the free pages lie between live chunks
# where free() alone never returns them. The trimmer looks twice.
BURST = textwrap.dedent(
    """
    from common.heap_trim import HeapTrimmer, anonymous_bytes
    from common.metrics import Registry
    registry = Registry()
    trimmer = HeapTrimmer(registry, threshold=16 << 20)
    blocks = [bytearray(2000) for _ in range(50_000)]
    kept = blocks[::64]
    del blocks
    grown = anonymous_bytes()
    first = trimmer.check()
    after = anonymous_bytes()
    second = trimmer.check()
    print(grown, first, after, second)
    print(registry.render().decode())
    """
)


@needs_glibc
def test_freed_memory_kept_by_the_allocator_goes_back_once() -> None:
    done = subprocess.run([sys.executable, "-c", BURST], capture_output=True, text=True, timeout=120, check=True)
    figures, metrics = done.stdout.split("\n", 1)
    grown, first, after, second = map(int, figures.split())
    assert first > 50 << 20, "most of the ~100 MB freed came back"
    assert after < grown - (50 << 20), "RssAnon itself fell"
    assert second == 0, "no growth since the trim: no second trim"
    assert metric_sum(metrics, "affinity_heap_trims_total") == 1
    assert metric_sum(metrics, "affinity_heap_trimmed_bytes_total") == first
    assert metric_sum(metrics, "affinity_heap_trim_seconds_total") > 0


def test_it_trims_only_after_growth_past_the_threshold() -> None:
    readings = iter([100, 110, 90, 120, 150, 140])  # start, then one reading per check (two when it trims)
    trims: list[int] = []
    trimmer = HeapTrimmer(
        Registry(), threshold=30, trim=lambda pad: trims.append(pad) or 1, measure=lambda: next(readings)
    )
    assert trimmer.check() == 0 and trims == []  # 110: grew 10
    assert trimmer.check() == 0 and trimmer.baseline == 90  # shrank by itself: growth counts from 90
    assert trimmer.check() == 0 and trims == [0] and trimmer.baseline == 150  # 120: grew 30; trimmed, nothing fell
    assert trimmer.check() == 0 and trims == [0]  # 140 is below the new floor


def test_the_step_that_trims_grows_with_the_process() -> None:
    mib = 1 << 20
    readings = iter([1000 * mib, 1015 * mib, 1025 * mib, 1000 * mib])  # start, then per check (two when it trims)
    trims: list[int] = []
    trim = lambda pad: trims.append(pad) or 1  # noqa: E731
    trimmer = HeapTrimmer(Registry(), threshold=4 * mib, share=0.02, trim=trim, measure=lambda: next(readings))
    assert trimmer.step == 20 * mib  # 2% of 1,000 MiB, more than the 4 MiB floor
    assert trimmer.check() == 0 and trims == []  # grew 15 MiB: under the step
    assert trimmer.check() == 25 * mib and trims == [0]  # grew 25: trimmed back to 1,000
    small = HeapTrimmer(Registry(), threshold=4 * mib, share=0.02, trim=lambda pad: 1, measure=lambda: 80 * mib)
    assert small.step == 4 * mib  # a 80 MiB process: the floor


def test_off_where_asked_or_where_there_is_no_malloc_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not HeapTrimmer(Registry(), interval=0).available
    assert not HeapTrimmer(Registry(), measure=lambda: None).available  # no /proc
    monkeypatch.setattr(heap_trim, "libc_malloc_trim", lambda: None)  # musl, macOS
    trimmer = HeapTrimmer(Registry(), measure=iter([0, 1 << 40]).__next__)
    assert not trimmer.available and trimmer.check() == 0


def test_the_loop_checks_on_a_thread_every_interval() -> None:
    import asyncio
    import threading

    readings = iter(range(0, 10_000, 40))  # grows 40 a reading: past the threshold at every check
    threads: set[str] = set()

    def trim(pad: int) -> int:
        threads.add(threading.current_thread().name)
        return 1

    registry = Registry()
    trimmer = HeapTrimmer(registry, interval=0.01, threshold=30, trim=trim, measure=lambda: next(readings))

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(trimmer.run())
        await asyncio.sleep(0.2)
        task.cancel()

    asyncio.run(main())
    assert metric_sum(registry.render().decode(), "affinity_heap_trims_total") >= 3
    assert threading.main_thread().name not in threads, "the trim runs off the event loop's thread"
