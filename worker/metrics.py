"""The worker's metrics (names as DESIGN.md's Settled points give them).

Label ``model`` only takes names the repository knows; anything else is
``unknown``, so a client cannot blow up the series count with made-up names.
"""

from __future__ import annotations

from collections.abc import Callable

from common.metrics import CounterChild, HistogramChild, Registry

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class WorkerMetrics:
    def __init__(self, known_model: Callable[[str], bool]) -> None:
        self.registry = Registry()
        self._known = known_model
        r = self.registry
        self.requests = r.counter(
            "affinity_requests", "Requests answered, by outcome.", ["role", "model", "code", "protocol", "cache"]
        )
        self.duration = r.histogram(
            "affinity_request_duration_seconds", "Time from request read to response.", ["role", "model"],
            LATENCY_BUCKETS,
        )  # fmt: skip
        self.loads = r.counter("affinity_model_loads", "Model loads, by source tier.", ["tier"])
        self.load_seconds = r.histogram(
            "affinity_model_load_seconds", "Time to load and warm up a model.", (),
            (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )  # fmt: skip
        self.batch_size = r.histogram(
            "affinity_batch_size", "Rows per forward pass.", ["model"], (1, 2, 4, 8, 16, 32, 64, 128, 256)
        )
        self.resident = r.counter("affinity_model_resident_loads", "Model versions made resident.").labels()
        self._children: dict[tuple[str, int], tuple[CounterChild, HistogramChild]] = {}

    def observe(self, model: str, code: int, seconds: float) -> None:
        key = (model, code)
        children = self._children.get(key)
        if children is None:
            label = model if self._known(model) else "unknown"
            children = (
                self.requests.labels("worker", label, str(code), "rest", "none"),
                self.duration.labels("worker", label),
            )
            if label != "unknown":
                self._children[key] = children
        children[0].value += 1
        children[1].observe(seconds)

    def batch(self, model: str, rows: int) -> None:
        """Called from the inference pool; a float add per batch needs no lock in CPython."""
        self.batch_size.labels(self.label(model)).observe(rows)

    def label(self, model: str) -> str:
        return model if self._known(model) else "unknown"

    def model_loaded(self, model: str, seconds: float) -> None:
        self.loads.labels("disk").inc()
        self.load_seconds.observe(seconds)
        self.resident.inc()

    def render(self) -> bytes:
        return self.registry.render()
