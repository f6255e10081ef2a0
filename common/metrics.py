"""Prometheus metrics that cost an add on the hot path.

prometheus_client's own metric objects take a lock and resolve labels on every
update (~2 us for a counter and a histogram together, measured here); on a
request path that spends ~25 us in all, that is too much. These families keep
plain numbers per label set, updated from the event loop's one thread, and
hand prometheus_client ready-made metric families only when scraped, so the
exposition is the standard one. Each part keeps its own ``Registry``: no
process globals.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramChild:
    __slots__ = ("buckets", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value


class Family:
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)

    def collect(self) -> Metric:
        raise NotImplementedError


class Counter(Family):
    """A counter family; ``name`` without the ``_total`` suffix (added on exposition)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, labelnames)
        self._children: dict[tuple[str, ...], CounterChild] = {}

    def labels(self, *values: str) -> CounterChild:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = CounterChild()
        return child

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            family.add_metric(list(values), child.value)
        return family


class Histogram(Family):
    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = ()
    ) -> None:
        super().__init__(name, documentation, labelnames)
        self.buckets = tuple(sorted(buckets))
        self._children: dict[tuple[str, ...], HistogramChild] = {}

    def labels(self, *values: str) -> HistogramChild:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = HistogramChild(self.buckets)
        return child

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            cumulative, buckets = 0, []
            for bound, count in zip((*self.buckets, float("inf")), child.counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
            family.add_metric(list(values), buckets, child.sum)
        return family


class CallbackGauge(Family):
    """A gauge whose samples are read from a callback at scrape time. ``merge`` says
    how processes sharing a port add it up (common.shared_metrics): sum or max."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        read: Callable[[], dict[tuple[str, ...], float]],
        merge: str = "sum",
    ) -> None:
        super().__init__(name, documentation, labelnames)
        self._read = read
        self.merge = merge

    def collect(self) -> Metric:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, value in self._read().items():
            family.add_metric(list(values), value)
        return family


class CallbackCounter(CallbackGauge):
    """A counter whose value is kept elsewhere (a client's error count) and read at
    scrape time; ``name`` without ``_total``."""

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, value in self._read().items():
            family.add_metric(list(values), value)
        return family


class Registry(Collector):
    def __init__(self) -> None:
        self.families: list[Family] = []
        self.prometheus = CollectorRegistry(auto_describe=False)
        self.prometheus.register(self)

    def add(self, family: Family) -> Family:
        self.families.append(family)
        return family

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        return self.add(Counter(name, documentation, labelnames))  # type: ignore[return-value]

    def histogram(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = ()
    ) -> Histogram:
        return self.add(Histogram(name, documentation, labelnames, buckets))  # type: ignore[return-value]

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.collect()

    def render(self) -> bytes:
        return generate_latest(self.prometheus)


class RequestMetrics:
    """``affinity_requests_total`` {role, model, code, protocol, cache} and
    ``affinity_request_duration_seconds`` {role, model} for one process role.

    ``model`` only takes names ``known_model`` accepts (anything else counts as
    ``unknown``, so made-up names cannot blow up the series count); the
    children for a (model, code, cache, protocol) are looked up once and kept.
    """

    def __init__(
        self,
        registry: Registry,
        role: str,
        known_model: Callable[[str], bool],
        buckets: Sequence[float],
    ) -> None:
        self.role = role
        self._known = known_model
        self.requests = registry.counter(
            "affinity_requests", "Requests answered, by outcome.", ["role", "model", "code", "protocol", "cache"]
        )
        self.duration = registry.histogram(
            "affinity_request_duration_seconds", "Time from request read to response.", ["role", "model"], buckets
        )
        self._children: dict[tuple[str, int, str, str], tuple[CounterChild, HistogramChild]] = {}

    def label(self, model: str) -> str:
        return model if self._known(model) else "unknown"

    def observe(self, model: str, code: int, cache: str, seconds: float, protocol: str = "rest") -> None:
        key = (model, code, cache, protocol)
        children = self._children.get(key)
        if children is None:
            label = self.label(model)
            children = (
                self.requests.labels(self.role, label, str(code), protocol, cache),
                self.duration.labels(self.role, label),
            )
            if label != "unknown":
                self._children[key] = children
        children[0].value += 1
        children[1].observe(seconds)
