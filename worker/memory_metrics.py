"""The memory manager's metrics: the observer it reports to, and the tier gauges.

    affinity_model_loads_total{tier}        pages-in, by the tier the model came from
                                            (remote, disk, or cpu for a promotion to gpu)
    affinity_model_load_seconds             time to load (and copy to a device) and warm up
    affinity_model_evictions_total{tier}    models leaving gpu, cpu or disk, demoted or dropped
    affinity_memory_bytes{tier,kind}        used and budget per tier, read at scrape time

Counters are updated on the event loop (the manager's thread), as every metric here is.
"""

from __future__ import annotations

from collections.abc import Callable

from common.metrics import CallbackGauge, Registry

LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class MemoryMetrics:
    def __init__(
        self, registry: Registry, tier_bytes: Callable[[], dict[tuple[str, ...], float]] | None = None
    ) -> None:
        self.loads = registry.counter("affinity_model_loads", "Model loads, by the tier the model came from.", ["tier"])
        self.load_seconds = registry.histogram(
            "affinity_model_load_seconds", "Time to load and warm up a model.", (), LOAD_BUCKETS
        )
        self.evictions = registry.counter(
            "affinity_model_evictions", "Models evicted from a tier (demoted or dropped).", ["tier"]
        )
        self._tier_bytes = tier_bytes or dict
        for tier in ("remote", "disk", "cpu"):  # every series exists from the start, at zero
            self.loads.labels(tier)
        for tier in ("gpu", "cpu", "disk"):
            self.evictions.labels(tier)
        help_text = "Bytes of model weights per tier: used and budget."
        registry.add(CallbackGauge("affinity_memory_bytes", help_text, ["tier", "kind"], self._read_bytes))

    def _read_bytes(self) -> dict[tuple[str, ...], float]:
        return self._tier_bytes()

    def read_bytes_from(self, tier_bytes: Callable[[], dict[tuple[str, ...], float]]) -> None:
        """Where the gauge reads (the manager's ``tier_bytes``), when built after this."""
        self._tier_bytes = tier_bytes

    def loaded(self, key: tuple[str, str], tier: str, seconds: float) -> None:
        self.loads.labels(tier).inc()
        self.load_seconds.observe(seconds)

    def evicted(self, key: tuple[str, str], tier: str) -> None:
        self.evictions.labels(tier).inc()
