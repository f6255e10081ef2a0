"""What one run measured, per process, and how processes' results merge.

Every time is in seconds from the start of the measured window (after
warm-up); processes share one start instant, so their per-second series line
up. Latency is from each request's scheduled send time to its answer, for
successful (2xx) answers; errors and drops are counted by kind instead.

``served_by`` and ``model_source`` count the answers a worker computed for
this request (cache hits excluded: they carry the id of the worker that once
computed them, and no model ran).

Counts add up: ``offered = ok + errors + dropped`` (``offered`` is every
request scheduled in the window; ``dropped`` ones never left, because the cap
on outstanding requests was reached; ``sent = ok + errors``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from loadgen.clients.base import Reply
from loadgen.histogram import LatencyHistogram

SECOND_DIGITS = 2  # per-second histograms: 1% precision keeps each ~26 KiB


@dataclass
class Second:
    """One second of the window: requests scheduled in it, and answers that
    arrived in it (``completed``: the achieved throughput)."""

    offered: int = 0
    dropped: int = 0
    ok: int = 0
    errors: int = 0
    completed: int = 0
    latency: LatencyHistogram = field(default_factory=lambda: LatencyHistogram(SECOND_DIGITS))

    def add(self, other: Second) -> None:
        self.offered += other.offered
        self.dropped += other.dropped
        self.ok += other.ok
        self.errors += other.errors
        self.completed += other.completed
        self.latency.add(other.latency)


@dataclass
class RunStats:
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    lag: LatencyHistogram = field(default_factory=LatencyHistogram)  # actual send - scheduled send
    offered: int = 0
    ok: int = 0
    errors: int = 0
    dropped: int = 0
    errors_by_kind: Counter[str] = field(default_factory=Counter)
    cache: Counter[str] = field(default_factory=Counter)
    served_by: Counter[str] = field(default_factory=Counter)
    model_source: Counter[str] = field(default_factory=Counter)
    by_model: Counter[str] = field(default_factory=Counter)
    seconds: dict[int, Second] = field(default_factory=dict)
    # the generator itself, warm-up included
    requests_total: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    processes: int = 1
    repeats: int = 0
    measured_from: float = 0.0  # time.monotonic() (one clock for every process on the host) of second 0

    @property
    def sent(self) -> int:
        return self.ok + self.errors

    def _second(self, at: float) -> Second:
        index = max(0, int(at))
        second = self.seconds.get(index)
        if second is None:
            second = self.seconds[index] = Second()
        return second

    def drop(self, model: str, scheduled: float) -> None:
        self.offered += 1
        self.dropped += 1
        self.by_model[model] += 1
        second = self._second(scheduled)
        second.offered += 1
        second.dropped += 1

    def record(self, model: str, scheduled: float, sent: float, done: float, reply: Reply | None, kind: str) -> None:
        """One request scheduled in the window and answered (``reply``) or
        failed without an answer (``kind``: timeout, connection, ...)."""
        self.offered += 1
        self.by_model[model] += 1
        second = self._second(scheduled)
        second.offered += 1
        self._second(done).completed += 1
        self.lag.record(sent - scheduled)
        if reply is not None:
            if reply.cache is not None:
                self.cache[reply.cache] += 1
            if reply.cache != "hit":  # a hit names the worker that once computed it: no work now
                if reply.served_by is not None:
                    self.served_by[reply.served_by] += 1
                if reply.model_source is not None:
                    self.model_source[reply.model_source] += 1
            if 200 <= reply.status < 300:
                self.ok += 1
                second.ok += 1
                self.latency.record(done - scheduled)
                second.latency.record(done - scheduled)
                return
            kind = f"http_{reply.status}"
        self.errors += 1
        second.errors += 1
        self.errors_by_kind[kind] += 1

    def merge(self, other: RunStats) -> None:
        """Add another process's results to these."""
        self.latency.add(other.latency)
        self.lag.add(other.lag)
        self.offered += other.offered
        self.ok += other.ok
        self.errors += other.errors
        self.dropped += other.dropped
        for mine, theirs in (
            (self.errors_by_kind, other.errors_by_kind),
            (self.cache, other.cache),
            (self.served_by, other.served_by),
            (self.model_source, other.model_source),
            (self.by_model, other.by_model),
        ):
            mine.update(theirs)
        for index, second in other.seconds.items():
            self.seconds.setdefault(index, Second()).add(second)
        self.requests_total += other.requests_total
        self.cpu_seconds += other.cpu_seconds
        self.wall_seconds = max(self.wall_seconds, other.wall_seconds)
        self.processes += other.processes
        self.repeats += other.repeats
        self.measured_from = self.measured_from or other.measured_from

    def to_wire(self) -> dict[str, Any]:
        """Plain data (strings, numbers) to cross a process boundary."""
        return {
            "latency": self.latency.encode(),
            "lag": self.lag.encode(),
            "counts": [self.offered, self.ok, self.errors, self.dropped],
            "errors_by_kind": dict(self.errors_by_kind),
            "cache": dict(self.cache),
            "served_by": dict(self.served_by),
            "model_source": dict(self.model_source),
            "by_model": dict(self.by_model),
            "seconds": [
                [i, s.offered, s.dropped, s.ok, s.errors, s.completed, s.latency.encode()]
                for i, s in sorted(self.seconds.items())
            ],
            "generator": [self.requests_total, self.cpu_seconds, self.wall_seconds, self.processes, self.repeats],
            "measured_from": self.measured_from,
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> RunStats:
        stats = cls(LatencyHistogram.decode(wire["latency"]), LatencyHistogram.decode(wire["lag"]))
        stats.offered, stats.ok, stats.errors, stats.dropped = wire["counts"]
        stats.errors_by_kind = Counter(wire["errors_by_kind"])
        stats.cache = Counter(wire["cache"])
        stats.served_by = Counter(wire["served_by"])
        stats.model_source = Counter(wire["model_source"])
        stats.by_model = Counter(wire["by_model"])
        for i, offered, dropped, ok, errors, completed, hist in wire["seconds"]:
            latency = LatencyHistogram.decode(hist, SECOND_DIGITS)
            stats.seconds[i] = Second(offered, dropped, ok, errors, completed, latency)
        stats.requests_total, stats.cpu_seconds, stats.wall_seconds, stats.processes, stats.repeats = wire["generator"]
        stats.measured_from = wire.get("measured_from", 0.0)
        return stats


def merge_all(parts: list[RunStats]) -> RunStats:
    if not parts:
        raise ValueError("nothing to merge")
    merged = RunStats.from_wire(parts[0].to_wire())  # a copy: the inputs stay as they were
    for part in parts[1:]:
        merged.merge(part)
    return merged
