"""Per-model statistics the worker keeps for ``/v2/models/{name}/stats`` (Triton's shape).

What is counted, per model version (all updates on the event loop, plain additions):

    success, fail   each request's time in the worker, by outcome (a failure
                    after the version was resolved: a bad input, a failed load, 507)
    queue           time a request waited for its batch's forward to start
    compute_input   decoding and checking a request (in the inference pool)
    compute_infer   the forward pass its rows ran in (each request is charged
                    its whole batch's forward, as Triton does)
    compute_output  encoding its answer
    batch_stats     per batch size: forwards and their times
    load_stats      page-ins of the version and their time (ours, not Triton's)

The batcher measures in its pool thread and hands one ``BatchTimes`` per
drain round back to the loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol.stats import BatchStat, ModelStats

Key = tuple[str, str]


@dataclass(slots=True)
class BatchTimes:
    """One drain round of one model, measured in the pool (nanoseconds)."""

    forwards: list[tuple[int, int, int, int]] = field(default_factory=list)  # rows, input, infer, output ns
    requests: int = 0  # requests that reached a forward
    queue_ns: int = 0  # summed over those requests
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0

    @property
    def rows(self) -> list[int]:
        return [f[0] for f in self.forwards]


class ModelStatistics:
    def __init__(self, now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        self._stats: dict[Key, ModelStats] = {}
        self._now_ms = now_ms  # wall clock: last_inference is a timestamp, not a duration

    def _of(self, key: Key) -> ModelStats:
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = ModelStats(*key)
        return stats

    def request(self, key: Key, ok: bool, ns: int) -> None:
        stats = self._of(key)
        stats.inference["success" if ok else "fail"].add(ns)
        if ok:
            stats.last_inference = self._now_ms()

    def batch(self, key: Key, times: BatchTimes) -> None:
        stats = self._of(key)
        inference = stats.inference
        inference["queue"].add(times.queue_ns, times.requests)
        inference["compute_input"].add(times.input_ns, times.requests)
        inference["compute_infer"].add(times.infer_ns, times.requests)
        inference["compute_output"].add(times.output_ns, times.requests)
        for rows, input_ns, infer_ns, output_ns in times.forwards:
            stats.inference_count += rows
            stats.execution_count += 1
            batch = stats.batches.get(rows)
            if batch is None:
                batch = stats.batches[rows] = BatchStat(rows)
            batch.durations["compute_input"].add(input_ns)
            batch.durations["compute_infer"].add(infer_ns)
            batch.durations["compute_output"].add(output_ns)

    def loaded(self, key: Key, seconds: float) -> None:
        self._of(key).load.add(int(seconds * 1e9))

    def forget(self, keep: Callable[[Key], bool]) -> None:
        """Drop the statistics of versions that left the repository."""
        for key in [k for k in self._stats if not keep(k)]:
            del self._stats[key]

    def of(self, key: Key, memory: list[tuple[str, int]]) -> ModelStats:
        """A copy of a version's statistics, with its memory use: (tier, bytes) pairs."""
        found = self._stats.get(key)
        stats = ModelStats.from_json(found.to_json()) if found is not None else ModelStats(*key)
        stats.memory_usage = [{"type": tier.upper(), "id": 0, "byte_size": size} for tier, size in memory]
        return stats
