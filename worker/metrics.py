"""The worker's metrics (names as docs/design.md gives them).

Requests and batch sizes here; the memory manager's (loads, evictions, bytes
per tier) in ``worker.memory_metrics``, on the same registry. Label ``model``
only takes names the repository knows; anything else is ``unknown``, so a
client cannot blow up the series count with made-up names.
"""

from __future__ import annotations

from collections.abc import Callable

from common.metrics import Registry, RequestMetrics
from worker.memory_metrics import MemoryMetrics

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class WorkerMetrics:
    def __init__(self, known_model: Callable[[str], bool]) -> None:
        self.registry = Registry()
        r = self.registry
        self.requests = RequestMetrics(r, "worker", known_model, LATENCY_BUCKETS)
        self.label = self.requests.label
        self.memory = MemoryMetrics(r)
        self.batch_size = r.histogram(
            "affinity_batch_size", "Rows per forward pass.", ["model"], (1, 2, 4, 8, 16, 32, 64, 128, 256)
        )

    def observe(self, model: str, code: int, protocol: str, seconds: float) -> None:
        self.requests.observe(model, code, "none", seconds, protocol)

    def batch(self, model: str, rows: int) -> None:
        """Rows in one forward pass (called on the event loop, like every metric update)."""
        self.batch_size.labels(self.label(model)).observe(rows)

    def render(self) -> bytes:
        return self.registry.render()
