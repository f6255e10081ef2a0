"""The balancer's Prometheus metrics, in a registry of its own (no process globals).

Label ``model`` only takes names from the repository index; anything else is
``unknown``. Labelled children are cached per (model, code, cache) so the hot
path does one dict lookup, not a label resolution.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class BalancerMetrics:
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
        self.decisions = Counter("affinity_route_decisions", "Routing decisions.", ["decision"], registry=self.registry)
        self.cache_hits = Counter(
            "affinity_cache_hits", "Response cache hits, by layer.", ["layer"], registry=self.registry
        )
        self.cache_misses = Counter("affinity_cache_misses", "Response cache misses.", registry=self.registry)
        self.coalesced = Counter(
            "affinity_cache_coalesced", "Requests that shared an identical in-flight request.", registry=self.registry
        )
        self.inflight = Gauge(
            "affinity_worker_inflight", "Requests in flight per worker.", ["worker"], registry=self.registry
        )
        self._decision_children = {d: self.decisions.labels(d) for d in ("primary", "spill", "retry")}
        self._hit_children = {layer: self.cache_hits.labels(layer) for layer in ("local", "redis")}
        self._children: dict[tuple[str, int, str], tuple[Counter, Histogram]] = {}

    def observe(self, model: str, code: int, cache: str, seconds: float) -> None:
        key = (model, code, cache)
        children = self._children.get(key)
        if children is None:
            label = model if self._known(model) else "unknown"
            children = (
                self.requests.labels("balancer", label, str(code), "rest", cache),
                self.duration.labels("balancer", label),
            )
            if label != "unknown":
                self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def route(self, decision: str) -> None:
        self._decision_children[decision].inc()

    def hit(self, layer: str) -> None:
        self._hit_children[layer].inc()

    def watch_inflight(self, inflight: dict[str, int]) -> None:
        """Report the members' live in-flight counts at scrape time."""
        self.inflight.clear()
        for worker in list(inflight):
            self.inflight.labels(worker).set_function(_reader(inflight, worker))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _reader(counts: dict[str, int], key: str) -> Callable[[], float]:
    return lambda: counts.get(key, 0)
