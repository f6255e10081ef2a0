"""Giving freed heap memory back to the system: glibc's ``malloc_trim``, when the
process's anonymous memory has grown.

Why (docs/reliability.md, the soak): a load spike makes a worker's resident
memory step up by ~150 MiB and stay there after the spike. glibc's
``malloc_stats`` on such a worker showed one thread's arena holding 134 MB from
the system with 12 MB in use: memory freed by the program and kept by the
allocator, which returns a thread arena's pages only when asked. One
``malloc_trim(0)`` took that worker from 547 to 397 MiB.

How: every ``interval`` seconds, on a thread of the default executor, read
``RssAnon`` (anonymous memory: the heap, not the memory-mapped weights, which
the page cache owns) and trim only when it has grown since the last trim (or
since the start) by ``share`` of what it was then or ``threshold``, whichever is
more, so a process whose memory holds steady never trims. The step scales with
the process: 4 MiB for a ~100 MiB balancer, whose retained memory rose in steps
of 1-4 MiB that a 16 MiB step never trimmed (one ``malloc_trim`` there gave back
4.1 MiB and took ~0.6 ms); 2% of a larger heap, so a big worker does not walk
its arenas every interval for a few megabytes. A trim walks the arenas
holding each one's lock in turn, so a thread that allocates from the arena
being walked (the event loop's included) may wait for it;
``affinity_heap_trim_seconds_total`` counts the time trims took, beside
``affinity_heap_trims_total`` and ``affinity_heap_trimmed_bytes_total`` (what
``RssAnon`` fell by).
Where the C library has no ``malloc_trim`` (musl, macOS) this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Callable
from pathlib import Path

from common.metrics import Registry

log = logging.getLogger("affinity.heap")

STATUS = Path("/proc/self/status")
DEFAULT_INTERVAL = 10.0
DEFAULT_THRESHOLD = 4 << 20  # the least growth that trims
DEFAULT_SHARE = 0.02  # ... or this share of the anonymous memory at the last trim, when more


def libc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def anonymous_bytes() -> int | None:
    """This process's resident anonymous memory (``RssAnon``), or None off Linux."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class HeapTrimmer:
    def __init__(
        self,
        registry: Registry,
        interval: float = DEFAULT_INTERVAL,
        threshold: int = DEFAULT_THRESHOLD,
        share: float = DEFAULT_SHARE,
        trim: Callable[[int], int] | None = None,
        measure: Callable[[], int | None] = anonymous_bytes,
    ) -> None:
        self.interval = interval
        self.threshold = threshold
        self.share = share
        self.trim = trim if trim is not None else libc_malloc_trim()
        self.measure = measure
        self.baseline = measure()
        self._trims = registry.counter(
            "affinity_heap_trims_total", "Times freed heap memory was handed back to the system (malloc_trim)."
        ).labels()
        self._trimmed = registry.counter(
            "affinity_heap_trimmed_bytes_total", "Anonymous resident memory those trims gave back, in bytes."
        ).labels()
        self._seconds = registry.counter(
            "affinity_heap_trim_seconds_total", "Time those trims took (arenas locked in turn while they run)."
        ).labels()

    @property
    def step(self) -> int:
        """The growth since the last trim that trims again."""
        return max(self.threshold, int(self.share * (self.baseline or 0)))

    @property
    def available(self) -> bool:
        return self.trim is not None and self.baseline is not None and self.interval > 0

    def check(self) -> int:
        """One look: trim when anonymous memory grew by ``step`` since the last
        trim; returns the bytes it gave back (0 when it did not trim)."""
        now = self.measure()
        if now is None or self.trim is None or self.baseline is None:
            return 0
        if now - self.baseline < self.step:
            self.baseline = min(self.baseline, now)  # it shrank by itself: measure growth from here
            return 0
        started = time.perf_counter()
        self.trim(0)
        self._seconds.inc(time.perf_counter() - started)
        after = self.measure()
        after = now if after is None else after
        released = max(0, now - after)
        self.baseline = after  # live memory that grew stays the new floor: no trim again until it grows more
        self._trims.inc()
        self._trimmed.inc(released)
        log.debug("heap trim: anonymous memory %d -> %d bytes", now, after)
        return released

    async def run(self) -> None:
        if not self.available:
            return
        while True:
            await asyncio.sleep(self.interval)
            await asyncio.to_thread(self.check)
