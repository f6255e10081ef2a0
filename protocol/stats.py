"""Per-model statistics in the shape of Triton's statistics extension.

``GET /v2/models/{name}[/versions/{v}]/stats`` answers ``{"model_stats": [...]}``,
one entry per version, as Triton serves it (tritonclient's
``get_inference_statistics`` reads it)::

    {"name": "mlp-00", "version": "1",
     "last_inference": 1764490000123,           # ms since the epoch, 0 before the first
     "inference_count": 12,                     # rows inferred (a batch of 4 counts 4)
     "execution_count": 3,                      # forward passes
     "inference_stats": {"success": {"count": 5, "ns": 81234}, "fail": ..., "queue": ...,
                         "compute_input": ..., "compute_infer": ..., "compute_output": ...,
                         "cache_hit": ..., "cache_miss": ...},
     "batch_stats": [{"batch_size": 4, "compute_input": ..., "compute_infer": ..., "compute_output": ...}],
     "memory_usage": [{"type": "CPU", "id": 0, "byte_size": 1048576}],
     "load_stats": {"count": 1, "ns": 51234567}}  # ours: page-ins of this version and their time

Each duration is ``{"count": N, "ns": total nanoseconds}``. ``combine`` adds up
the entries of several servers (the balancer's view over its workers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

INFERENCE_STATS = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)
BATCH_STATS = ("compute_input", "compute_infer", "compute_output")


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}

    @classmethod
    def from_json(cls, raw: Any) -> Duration:
        if not isinstance(raw, dict):
            return cls()
        return cls(int(raw.get("count", 0)), int(raw.get("ns", 0)))


def _durations(names: tuple[str, ...]) -> dict[str, Duration]:
    return {name: Duration() for name in names}


@dataclass(slots=True)
class BatchStat:
    batch_size: int
    durations: dict[str, Duration] = field(default_factory=lambda: _durations(BATCH_STATS))

    def to_json(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, **{k: d.to_json() for k, d in self.durations.items()}}


@dataclass(slots=True)
class ModelStats:
    name: str
    version: str
    last_inference: int = 0
    inference_count: int = 0
    execution_count: int = 0
    inference: dict[str, Duration] = field(default_factory=lambda: _durations(INFERENCE_STATS))
    batches: dict[int, BatchStat] = field(default_factory=dict)
    memory_usage: list[dict[str, Any]] = field(default_factory=list)
    load: Duration = field(default_factory=Duration)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {k: d.to_json() for k, d in self.inference.items()},
            "batch_stats": [self.batches[size].to_json() for size in sorted(self.batches)],
            "memory_usage": list(self.memory_usage),
            "load_stats": self.load.to_json(),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ModelStats:
        stats = cls(str(raw["name"]), str(raw.get("version", "")))
        stats.last_inference = int(raw.get("last_inference", 0))
        stats.inference_count = int(raw.get("inference_count", 0))
        stats.execution_count = int(raw.get("execution_count", 0))
        given = raw.get("inference_stats") or {}
        for name in INFERENCE_STATS:
            stats.inference[name] = Duration.from_json(given.get(name))
        for batch in raw.get("batch_stats") or ():
            size = int(batch["batch_size"])
            stats.batches[size] = BatchStat(size, {k: Duration.from_json(batch.get(k)) for k in BATCH_STATS})
        stats.memory_usage = [dict(m) for m in raw.get("memory_usage") or () if isinstance(m, dict)]
        stats.load = Duration.from_json(raw.get("load_stats"))
        return stats

    def merge(self, other: ModelStats) -> None:
        """Add ``other``'s counts and times to these (same name and version)."""
        self.last_inference = max(self.last_inference, other.last_inference)
        self.inference_count += other.inference_count
        self.execution_count += other.execution_count
        for name, duration in other.inference.items():
            self.inference.setdefault(name, Duration()).add(duration.ns, duration.count)
        for size, batch in other.batches.items():
            mine = self.batches.setdefault(size, BatchStat(size))
            for name, duration in batch.durations.items():
                mine.durations.setdefault(name, Duration()).add(duration.ns, duration.count)
        self.memory_usage += other.memory_usage
        self.load.add(other.load.ns, other.load.count)


def combine(groups: list[list[ModelStats]]) -> list[ModelStats]:
    """One entry per (name, version) over several servers' answers, counts and times summed."""
    merged: dict[tuple[str, str], ModelStats] = {}
    for group in groups:
        for stats in group:
            key = (stats.name, stats.version)
            if key not in merged:
                merged[key] = ModelStats(stats.name, stats.version)
            merged[key].merge(stats)
    return [merged[k] for k in sorted(merged, key=lambda k: (k[0], int(k[1]) if k[1].isdigit() else -1))]


def stats_body(entries: list[ModelStats]) -> dict[str, Any]:
    return {"model_stats": [e.to_json() for e in entries]}


def parse_stats_body(raw: Any) -> list[ModelStats]:
    """The entries of a ``{"model_stats": [...]}`` answer; ValueError when it is not one."""
    if not isinstance(raw, dict) or not isinstance(raw.get("model_stats"), list):
        raise ValueError("not a statistics answer")
    try:
        return [ModelStats.from_json(e) for e in raw["model_stats"]]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"malformed statistics entry ({type(exc).__name__})") from None
