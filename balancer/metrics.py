"""The balancer's metrics (names as docs/design.md gives them).

Label ``model`` only takes names from the repository index; anything else is
``unknown`` (see ``common.metrics.RequestMetrics``).
"""

from __future__ import annotations

from collections.abc import Callable

from common.metrics import CallbackGauge, Registry, RequestMetrics

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class BalancerMetrics:
    def __init__(self, known_model: Callable[[str], bool], inflight: dict[str, int] | None = None) -> None:
        self.registry = Registry()
        r = self.registry
        self.requests = RequestMetrics(r, "balancer", known_model, LATENCY_BUCKETS)
        self.observe = self.requests.observe
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

    def upstream_try(self, worker: str, seconds: float) -> None:
        self.upstream.labels(worker).observe(seconds)

    def route(self, decision: str) -> None:
        self._decisions[decision].value += 1

    def hit(self, layer: str) -> None:
        self._hits[layer].value += 1

    def render(self) -> bytes:
        return self.registry.render()
