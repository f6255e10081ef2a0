"""``report.json``: one run's results, built from the merged ``RunStats``.

Latencies are in milliseconds, from each request's scheduled send time, over
successful answers. ``send_lag`` is how late the generator sent (actual minus
scheduled): when it grows, the generator was the bottleneck; so does
``generator.busy`` (CPU seconds over wall seconds, per process) near 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from loadgen.config import LoadConfig
from loadgen.histogram import LatencyHistogram
from loadgen.stats import RunStats
from loadgen.target import Target

RESIDENT = ("cpu", "gpu")  # X-Model-Source values that mean no load was needed
MS = 1e3


@dataclass(frozen=True, slots=True)
class Latency:
    p50: float
    p90: float
    p99: float
    p999: float
    max: float
    mean: float

    @classmethod
    def of(cls, hist: LatencyHistogram) -> Latency:
        p50, p90, p99, p999 = (hist.percentile(p) * MS for p in (50.0, 90.0, 99.0, 99.9))
        return cls(p50, p90, p99, p999, hist.max() * MS, hist.mean() * MS)


@dataclass(frozen=True, slots=True)
class Counts:
    offered: int
    sent: int
    ok: int
    errors: int
    dropped: int


@dataclass(frozen=True, slots=True)
class CacheSummary:
    hit: int
    miss: int
    bypass: int
    hit_ratio: float  # hits over answers that carried X-Cache


@dataclass(frozen=True, slots=True)
class GeneratorCost:
    processes: int
    requests: int  # warm-up included
    cpu_seconds: float
    cpu_per_request_us: float
    busy: float  # CPU over wall time, per process: near 1.0, the generator was saturated
    repeats: int


@dataclass(frozen=True, slots=True)
class SecondRow:
    second: int
    offered: int
    ok: int
    errors: int
    dropped: int
    completed: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True, slots=True)
class Report:
    config: dict[str, Any]
    models: list[str]
    skipped_models: list[str]
    duration: float
    counts: Counts
    offered_rps: float
    achieved_rps: float  # successful answers per second of the window
    latency_ms: Latency
    latency_cdf: list[tuple[float, float]]  # (ms, fraction at or below)
    send_lag_ms: Latency
    errors_by_kind: dict[str, int]
    cache: CacheSummary
    served_by: dict[str, int]
    model_source: dict[str, int]
    model_loads: int
    by_model: dict[str, int]
    generator: GeneratorCost
    series: list[SecondRow]
    histogram: str  # the latency histogram, HDR's compressed base64 form (microseconds)
    measured_from: float = 0.0  # time.monotonic() of the series' second 0 (the host's one clock), to align events

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["latency_ms"] = _latency_json(self.latency_ms)
        out["send_lag_ms"] = _latency_json(self.send_lag_ms)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Report:
        return cls(
            config=raw["config"],
            models=raw["models"],
            skipped_models=raw.get("skipped_models", []),
            duration=raw["duration"],
            counts=Counts(**raw["counts"]),
            offered_rps=raw["offered_rps"],
            achieved_rps=raw["achieved_rps"],
            latency_ms=_latency_from(raw["latency_ms"]),
            latency_cdf=[(float(a), float(b)) for a, b in raw["latency_cdf"]],
            send_lag_ms=_latency_from(raw["send_lag_ms"]),
            errors_by_kind=raw["errors_by_kind"],
            cache=CacheSummary(**raw["cache"]),
            served_by=raw["served_by"],
            model_source=raw["model_source"],
            model_loads=raw["model_loads"],
            by_model=raw["by_model"],
            generator=GeneratorCost(**raw["generator"]),
            series=[SecondRow(**row) for row in raw["series"]],
            histogram=raw["histogram"],
            measured_from=raw.get("measured_from", 0.0),
        )

    def write(self, path: Path) -> None:
        path.write_bytes(orjson.dumps(self.to_json(), option=orjson.OPT_INDENT_2))

    @classmethod
    def read(cls, path: Path) -> Report:
        return cls.from_json(orjson.loads(path.read_bytes()))


def _latency_json(latency: Latency) -> dict[str, float]:
    return {
        "p50": latency.p50,
        "p90": latency.p90,
        "p99": latency.p99,
        "p99.9": latency.p999,
        "max": latency.max,
        "mean": latency.mean,
    }


def _latency_from(raw: dict[str, float]) -> Latency:
    return Latency(raw["p50"], raw["p90"], raw["p99"], raw["p99.9"], raw["max"], raw["mean"])


def build_report(config: LoadConfig, target: Target, stats: RunStats) -> Report:
    duration = config.duration
    answered_with_cache = sum(stats.cache.values())
    series = []
    last = max(stats.seconds, default=-1)
    for i in range(last + 1):
        s = stats.seconds.get(i)
        if s is None:
            series.append(SecondRow(i, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0))
            continue
        lat = s.latency
        row = SecondRow(i, s.offered, s.ok, s.errors, s.dropped, s.completed, 0.0, 0.0, 0.0)
        if lat.count:
            row = dataclasses.replace(
                row, p50_ms=lat.percentile(50) * MS, p99_ms=lat.percentile(99) * MS, max_ms=lat.max() * MS
            )
        series.append(row)
    requests = stats.requests_total
    return Report(
        config=config.to_json(),
        models=[m.name for m in target.models],
        skipped_models=list(target.skipped),
        duration=duration,
        counts=Counts(stats.offered, stats.sent, stats.ok, stats.errors, stats.dropped),
        offered_rps=stats.offered / duration,
        achieved_rps=stats.ok / duration,
        latency_ms=Latency.of(stats.latency),
        latency_cdf=[(seconds * MS, fraction) for seconds, fraction in stats.latency.cdf()],
        send_lag_ms=Latency.of(stats.lag),
        errors_by_kind=dict(sorted(stats.errors_by_kind.items())),
        cache=CacheSummary(
            stats.cache["hit"],
            stats.cache["miss"],
            stats.cache["bypass"],
            stats.cache["hit"] / answered_with_cache if answered_with_cache else 0.0,
        ),
        served_by=dict(sorted(stats.served_by.items())),
        model_source=dict(sorted(stats.model_source.items())),
        model_loads=sum(n for source, n in stats.model_source.items() if source not in RESIDENT),
        by_model=dict(sorted(stats.by_model.items())),
        generator=GeneratorCost(
            processes=stats.processes,
            requests=requests,
            cpu_seconds=stats.cpu_seconds,
            cpu_per_request_us=stats.cpu_seconds / requests * 1e6 if requests else 0.0,
            busy=stats.cpu_seconds / (stats.wall_seconds * stats.processes) if stats.wall_seconds else 0.0,
            repeats=stats.repeats,
        ),
        series=series,
        histogram=stats.latency.encode(),
        measured_from=stats.measured_from,
    )
