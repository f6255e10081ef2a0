"""The balancer's metrics (names as DESIGN.md's Settled points give them).

Label ``model`` only takes names from the repository index; anything else is
``unknown``, so made-up names cannot blow up the series count. The children
for a (model, code, cache) triple are looked up once and kept.
"""

from __future__ import annotations

from collections.abc import Callable

from common.metrics import CallbackGauge, CounterChild, HistogramChild, Registry

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class BalancerMetrics:
    def __init__(self, known_model: Callable[[str], bool], inflight: dict[str, int] | None = None) -> None:
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
        self.upstream = r.histogram(
            "affinity_upstream_duration_seconds", "Time of one try at a worker.", ["worker"], LATENCY_BUCKETS
        )
        self.decisions = r.counter("affinity_route_decisions", "Routing decisions.", ["decision"])
        self.cache_hits = r.counter("affinity_cache_hits", "Response cache hits, by layer.", ["layer"])
        self.cache_misses = r.counter("affinity_cache_misses", "Response cache misses.").labels()
        self.coalesced = r.counter(
            "affinity_cache_coalesced", "Requests that shared an identical request in flight."
        ).labels()
        counts = inflight if inflight is not None else {}
        r.add(
            CallbackGauge(
                "affinity_worker_inflight",
                "Requests in flight per worker.",
                ["worker"],
                lambda: {(w,): float(n) for w, n in counts.items()},
            )
        )
        self._decisions = {d: self.decisions.labels(d) for d in ("primary", "spill", "retry")}
        self._hits = {layer: self.cache_hits.labels(layer) for layer in ("local", "redis")}
        self._children: dict[tuple[str, int, str], tuple[CounterChild, HistogramChild]] = {}

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
        children[0].value += 1
        children[1].observe(seconds)

    def upstream_try(self, worker: str, seconds: float) -> None:
        self.upstream.labels(worker).observe(seconds)

    def route(self, decision: str) -> None:
        self._decisions[decision].value += 1

    def hit(self, layer: str) -> None:
        self._hits[layer].value += 1

    def render(self) -> bytes:
        return self.registry.render()
