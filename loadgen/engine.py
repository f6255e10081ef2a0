"""The request loop of one generator process: open or closed, then drain.

Open loop: send times come from the arrival process, fixed in advance; the
loop sleeps until each one, never relative to the last send, and latency is
measured from the scheduled time, so time a request spent waiting behind a
slow one (or behind the generator itself) counts against the target as a real
client would see it. A request due while ``max_outstanding`` are in flight is
dropped and counted. Closed loop: ``concurrency`` clients, each sending its
next request when its last is answered (latency from the actual send: the
coordinated-omission caveat of any closed loop, reported as its mode).

Requests scheduled during warm-up are sent but not recorded. The run ends
when the window closes and every request in flight has answered (each has the
client's timeout); any still running after that is cancelled and counted.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from loadgen.arrivals import offsets
from loadgen.clients.base import EncodedRequest, InferClient, Reply, SendError
from loadgen.config import LoadConfig
from loadgen.payloads import PayloadSource
from loadgen.stats import RunStats

TICK = 0.5  # seconds between progress snapshots
DRAIN_GRACE = 5.0  # past the client timeout, before in-flight requests are cancelled
CATCH_UP = 8  # requests sent back to back, when behind schedule, between yields to the loop


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Live counts for the progress line (warm-up included); ``p50``/``p99``
    and ``answered`` cover the last tick only."""

    elapsed: float
    total: float
    warming: bool
    sent: int
    ok: int
    errors: int
    dropped: int
    outstanding: int
    interval: float
    answered: int
    p50: float
    p99: float

    @property
    def rate(self) -> float:
        return self.answered / self.interval if self.interval > 0 else 0.0

    @staticmethod
    def combine(parts: list[Snapshot]) -> Snapshot:
        """Several processes' snapshots as one line: counts add; p50 is the
        answer-weighted mean of theirs and p99 the worst (display only)."""
        answered = sum(p.answered for p in parts)
        p50 = sum(p.p50 * p.answered for p in parts) / answered if answered else 0.0
        return Snapshot(
            elapsed=max(p.elapsed for p in parts),
            total=max(p.total for p in parts),
            warming=any(p.warming for p in parts),
            sent=sum(p.sent for p in parts),
            ok=sum(p.ok for p in parts),
            errors=sum(p.errors for p in parts),
            dropped=sum(p.dropped for p in parts),
            outstanding=sum(p.outstanding for p in parts),
            interval=max(p.interval for p in parts),
            answered=answered,
            p50=p50,
            p99=max(p.p99 for p in parts),
        )


class Engine:
    def __init__(
        self,
        config: LoadConfig,
        client: InferClient,
        source: PayloadSource,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.client = client
        self.source = source
        self.clock = clock
        self.stats = RunStats()
        self._tasks: set[asyncio.Task[None]] = set()
        self._start = self._measure = 0.0
        # live counts over the whole run, for progress
        self._sent = self._ok = self._errors = self._dropped = 0
        self._recent: list[float] = []
        self._last_snapshot = 0.0

    async def run(self, start_at: float, tick: Callable[[Snapshot], None] | None = None) -> RunStats:
        """Run from ``start_at`` (a ``clock()`` instant shared by all processes)."""
        config = self.config
        self._start = start_at
        self._measure = start_at + config.warmup
        self.stats.measured_from = self._measure
        end = self._measure + config.duration
        await self.client.start()
        ticker = asyncio.create_task(self._ticks(tick)) if tick is not None else None
        cpu_started = time.process_time()
        try:
            await self._sleep_until(start_at)
            if config.closed_loop:
                async with asyncio.TaskGroup() as group:
                    for _ in range(config.concurrency):
                        group.create_task(self._closed_client(end))
            else:
                await self._open(end)
            await self._drain()
        finally:
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if ticker is not None:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
            await self.client.close()
        self.stats.cpu_seconds = time.process_time() - cpu_started
        self.stats.wall_seconds = self.clock() - start_at
        self.stats.repeats = self.source.repeats
        if tick is not None:
            tick(self.snapshot())
        return self.stats

    async def _sleep_until(self, at: float) -> None:
        """Never early: the loop's timers have millisecond granularity (uvloop
        wakes up to ~1 ms early), so sleep again for what is left."""
        while (delay := at - self.clock()) > 0:  # noqa: ASYNC110 - a deadline, not a condition to wait on
            await asyncio.sleep(delay)

    async def _open(self, end: float) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        behind = 0
        for offset in offsets(config.arrivals, config.rate, config.seed, config.phase):
            at = self._start + offset
            if at >= end:
                return
            if at > self.clock():
                behind = 0
                await self._sleep_until(at)
            elif (behind := behind + 1) % CATCH_UP == 0:
                await asyncio.sleep(0)  # behind schedule: still let answers in
            request = self.source.next()
            self.stats.requests_total += 1
            if len(self._tasks) >= config.max_outstanding:
                self._dropped += 1
                if at >= self._measure:
                    self.stats.drop(request.model, at - self._measure)
                continue
            task = loop.create_task(self._one(request, at))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _closed_client(self, end: float) -> None:
        while (at := self.clock()) < end:
            request = self.source.next()
            self.stats.requests_total += 1
            await self._one(request, at)

    async def _one(self, request: EncodedRequest, scheduled: float) -> None:
        sent = self.clock()
        self._sent += 1
        reply: Reply | None = None
        kind = "cancelled"  # what a request cancelled at shutdown counts as
        try:
            reply = await self.client.send(request)
        except SendError as exc:
            kind = exc.kind
        except Exception as exc:  # a client bug must show in the report, not kill the run
            kind = f"unexpected_{type(exc).__name__}"
        finally:  # a cancelled request is still counted, so the counts add up
            done = self.clock()
            ok = reply is not None and 200 <= reply.status < 300
            if ok:
                self._ok += 1
                self._recent.append(done - scheduled)
            else:
                self._errors += 1
            if scheduled >= self._measure:
                m = self._measure
                self.stats.record(request.model, scheduled - m, sent - m, done - m, reply, kind)

    async def _drain(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.config.timeout + DRAIN_GRACE)

    def snapshot(self) -> Snapshot:
        """Live counts; p50, p99 and rate over the time since the last snapshot."""
        recent, self._recent = self._recent, []
        recent.sort()
        now = self.clock()
        interval = now - max(self._start, self._last_snapshot)
        self._last_snapshot = now
        elapsed = now - self._start
        return Snapshot(
            elapsed=max(0.0, elapsed),
            total=self.config.warmup + self.config.duration,
            warming=elapsed < self.config.warmup,
            sent=self._sent,
            ok=self._ok,
            errors=self._errors,
            dropped=self._dropped,
            outstanding=len(self._tasks),
            interval=interval,
            answered=len(recent),
            p50=statistics.median(recent) if recent else 0.0,
            p99=recent[min(len(recent) - 1, int(0.99 * len(recent)))] if recent else 0.0,
        )

    async def _ticks(self, tick: Callable[[Snapshot], None]) -> None:
        while True:
            await asyncio.sleep(TICK)
            tick(self.snapshot())
