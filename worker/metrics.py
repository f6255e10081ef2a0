"""The worker's Prometheus metrics, in a registry of its own (no process globals).

Label ``model`` only takes names the repository knows; anything else is ``unknown``,
so a client cannot blow up the series count with made-up names.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class WorkerMetrics:
    def __init__(self, known_model: Callable[[str], bool]) -> None:
        self.registry = CollectorRegistry()
        self._known = known_model
        self.requests = Counter(
            "affinity_requests",
            "Requests answered, by outcome.",
            ["role", "model", "code", "protocol", "cache"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "affinity_request_duration_seconds",
            "Time from request read to response, by model.",
            ["role", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.loads = Counter("affinity_model_loads", "Model loads, by source tier.", ["tier"], registry=self.registry)
        self.load_seconds = Histogram(
            "affinity_model_load_seconds",
            "Time to load and warm up a model.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.resident = Gauge("affinity_models_resident", "Model versions resident in memory.", registry=self.registry)
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def label(self, model: str) -> str:
        return model if self._known(model) else "unknown"

    def observe(self, model: str, code: int, seconds: float) -> None:
        key = (model, code)
        children = self._children.get(key)
        if children is None:
            label = self.label(model)
            children = (
                self.requests.labels("worker", label, str(code), "rest", "none"),
                self.duration.labels("worker", label),
            )
            if label != "unknown":
                self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def model_loaded(self, model: str, seconds: float) -> None:
        self.loads.labels("disk").inc()
        self.load_seconds.observe(seconds)
        self.resident.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
