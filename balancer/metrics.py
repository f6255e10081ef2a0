"""The balancer's metrics (names as docs/design.md gives them).

Label ``model`` only takes names from the repository index; anything else is
``unknown`` (see ``common.metrics.RequestMetrics``). Every update on the hot
path is a plain addition on a child looked up once.
"""

from __future__ import annotations

from collections.abc import Callable

from cache.response_cache import ResponseCache
from common.metrics import CallbackCounter, CallbackGauge, CounterChild, Registry, RequestMetrics
from common.shared_metrics import SharedMetrics

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LOOKUP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class BalancerMetrics:
    def __init__(self, known_model: Callable[[str], bool], inflight: dict[str, int] | None = None) -> None:
        self.shared: SharedMetrics | None = None
        self.registry = Registry()
        r = self.registry
        self.requests = RequestMetrics(r, "balancer", known_model, LATENCY_BUCKETS)
        self.observe = self.requests.observe
        self.label = self.requests.label
        self.upstream = r.histogram(
            "affinity_upstream_duration_seconds", "Time of one try at a worker.", ["worker"], LATENCY_BUCKETS
        )
        self.decisions = r.counter("affinity_route_decisions", "Routing decisions.", ["decision"])
        self.cache_hits = r.counter(
            "affinity_cache_hits", "Response cache hits, by layer and model.", ["layer", "model"]
        )
        self.cache_misses = r.counter("affinity_cache_misses", "Response cache misses, by model.", ["model"])
        self.coalesced = r.counter(
            "affinity_cache_coalesced",
            "Requests answered by an identical request in flight, here (local) or in another balancer (remote).",
            ["scope"],
        )
        self.stores = r.counter("affinity_cache_stores", "Answers stored in the cache.").labels()
        self.skips = r.counter("affinity_cache_skips", "Answers not stored, by reason.", ["reason"])
        self.lookup = r.histogram(
            "affinity_cache_lookup_seconds", "Time of a Redis cache lookup.", ["layer"], LOOKUP_BUCKETS
        ).labels("redis")
        counts = inflight if inflight is not None else {}
        r.add(
            CallbackGauge(
                "affinity_worker_inflight",
                "Requests in flight per worker.",
                ["worker"],
                lambda: {(w,): float(n) for w, n in counts.items()},
            )
        )
        self._decisions = {d: self.decisions.labels(d) for d in ("primary", "spill", "resident_spill", "retry")}
        self.retries = r.counter("affinity_retries", "Tries sent to another worker, by what failed.", ["reason"])
        self.retries_denied = r.counter(
            "affinity_retries_denied",
            "Retries not sent: the retry budget was spent or the deadline passed.",
            ["reason"],
        )
        self.ejections = r.counter(
            "affinity_worker_ejections",
            "Workers taken out of rotation: outlier (failed tries in a row) or probe (failed health checks).",
            ["worker", "reason"],
        )
        self.shed_total = r.counter(
            "affinity_shed", "Requests refused with 503 at an in-flight cap (total or per worker).", ["limit"]
        )
        self._hits: dict[tuple[str, str], CounterChild] = {}
        self._misses: dict[str, CounterChild] = {}

    def watch_cache(self, cache: ResponseCache) -> None:
        """Counters the cache keeps itself, read when scraped."""
        remote = cache.remote
        self.registry.add(
            CallbackCounter(
                "affinity_cache_invalid_entries",
                "Entries read from Redis and refused (unparseable or unsafe): served as misses.",
                [],
                lambda: {(): float(cache.invalid)},
            )
        )
        lru = cache.local
        self.registry.add(
            CallbackGauge(
                "affinity_cache_memory_bytes",
                "The in-process cache's memory: used (entries, their renderings and bookkeeping) and capacity.",
                ["kind"],
                lambda: {("used",): float(lru.used), ("capacity",): float(lru.capacity)},
            )
        )
        self.registry.add(
            CallbackGauge("affinity_cache_entries", "Answers held in the in-process cache.", [], lambda: {(): len(lru)})
        )
        if remote is not None:
            self.registry.add(
                CallbackCounter(
                    "affinity_cache_redis_errors", "Redis calls that failed or timed out.", [],
                    lambda: {(): float(remote.errors)},
                )
            )  # fmt: skip
            self.registry.add(
                CallbackGauge(
                    "affinity_cache_breaker_state",
                    "The Redis layer's circuit breaker: 1 for the state it is in.",
                    ["state"],
                    lambda: {(s,): float(remote.breaker.state == s) for s in ("closed", "open", "half-open")},
                )
            )

    def upstream_try(self, worker: str, seconds: float) -> None:
        self.upstream.labels(worker).observe(seconds)

    def watch_cluster(
        self,
        ring_size: Callable[[], dict[tuple[str, ...], float]],
        health: Callable[[], dict[tuple[str, ...], float]],
        replicas: Callable[[], dict[tuple[str, ...], float]],
        trials: Callable[[], dict[tuple[str, ...], float]] | None = None,
    ) -> None:
        """Gauges read from the membership when scraped."""
        self.registry.add(
            CallbackGauge("affinity_ring_size", "Workers on the ring, and how many are admitted.", ["state"], ring_size)
        )
        self.registry.add(
            CallbackGauge(
                "affinity_worker_health", "1 for each worker's state: healthy, ejected, down, draining.",
                ["worker", "state"], health,
            )
        )  # fmt: skip
        self.registry.add(CallbackGauge("affinity_model_replicas", "Replicas of hot models.", ["model"], replicas))
        if trials is not None:
            self.registry.add(
                CallbackCounter(
                    "affinity_replica_trials",
                    "Replicas grown on trial, by outcome: kept (the model's answers came faster or more), "
                    "reverted, or undecided (too few answers to judge: kept).",
                    ["outcome"],
                    trials,
                )
            )

    def retry(self, reason: str) -> None:
        self.retries.labels(reason).value += 1

    def retry_denied(self, reason: str) -> None:
        self.retries_denied.labels(reason).value += 1

    def ejection(self, worker: str, reason: str) -> None:
        self.ejections.labels(worker, reason).value += 1

    def shed(self, limit: str) -> None:
        self.shed_total.labels(limit).value += 1

    def route(self, decision: str) -> None:
        self._decisions[decision].value += 1

    def hit(self, layer: str, model: str) -> None:
        child = self._hits.get((layer, model))
        if child is None:
            child = self.cache_hits.labels(layer, self.label(model))
            if self.label(model) != "unknown":
                self._hits[layer, model] = child
        child.value += 1

    def miss(self, model: str) -> None:
        child = self._misses.get(model)
        if child is None:
            child = self.cache_misses.labels(self.label(model))
            if self.label(model) != "unknown":
                self._misses[model] = child
        child.value += 1

    def store_outcome(self, outcome: str) -> None:
        """``stored``, or the reason an answer was not stored."""
        if outcome == "stored":
            self.stores.value += 1
        else:
            self.skips.labels(outcome).value += 1

    def render(self) -> bytes:
        """This process's metrics, or, with sibling processes on one port, everyone's sum."""
        if self.shared is not None:
            return self.shared.render()
        return self.registry.render()
