"""Metrics of several processes serving one port, added up.

With ``affinity balancer --processes N`` the kernel spreads connections over N
processes (SO_REUSEPORT), and a scrape reaches any one of them. So each
publishes a snapshot of its registry to a shared directory once a second, and
``/metrics`` on any of them renders its own live values plus the others'
snapshots: counters, histograms and gauges add up, except gauges whose family
says ``merge="max"`` (the largest event-loop lag, say); ``affinity_processes``
says how many processes were added up. A process publishes once it listens and
removes its file when it stops; the supervisor removes a dead one's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from common.metrics import Registry

log = logging.getLogger(__name__)

Snapshot = list[dict[str, Any]]


def snapshot(registry: Registry) -> Snapshot:
    """The registry's samples as plain data, with each family's merge rule."""
    out: Snapshot = []
    for family in registry.families:
        metric = family.collect()
        out.append(
            {
                "name": metric.name,
                "type": metric.type,
                "doc": metric.documentation,
                "merge": getattr(family, "merge", "sum"),
                "samples": [[s.name, s.labels, s.value] for s in metric.samples],
            }
        )
    return out


def merge(snapshots: list[Snapshot]) -> list[Metric]:
    families: dict[str, Metric] = {}
    rules: dict[str, str] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for snap in snapshots:
        for fam in snap:
            name = fam["name"]
            if name not in families:
                families[name] = Metric(name, fam["doc"], fam["type"])
                rules[name] = fam["merge"]
                values[name] = {}
            seen = values[name]
            for sample_name, labels, value in fam["samples"]:
                key = (sample_name, tuple(sorted(labels.items())))
                if key in seen and rules[name] == "max":
                    seen[key] = max(seen[key], value)
                else:
                    seen[key] = seen.get(key, 0.0) + value
    for name, metric in families.items():
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)
    return list(families.values())


class _Merged(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics


class SharedMetrics:
    """One process's side: publish its snapshot, render everyone's sum."""

    def __init__(self, registry: Registry, directory: Path, interval: float = 1.0) -> None:
        self.registry = registry
        self.directory = directory
        self.interval = interval
        self.path = directory / f"{os.getpid()}.json"

    def publish(self, data: bytes | None = None) -> None:
        staging = self.path.with_suffix(".tmp")
        staging.write_bytes(data if data is not None else orjson.dumps(snapshot(self.registry)))
        staging.replace(self.path)

    def others(self) -> list[Snapshot]:
        found = []
        for path in self.directory.glob("*.json"):
            if path == self.path:
                continue
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                found.append(orjson.loads(path.read_bytes()))
        return found

    def render(self) -> bytes:
        others = self.others()
        processes = Metric("affinity_processes", "Processes sharing this port, added up here.", "gauge")
        processes.add_sample("affinity_processes", {}, float(1 + len(others)))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged([*merge([snapshot(self.registry), *others]), processes]))
        return generate_latest(registry)

    async def run(self) -> None:
        while True:
            try:
                # The snapshot on the loop (the registry is the loop's), the file write off it.
                data = orjson.dumps(snapshot(self.registry))
                await asyncio.get_running_loop().run_in_executor(None, self.publish, data)
            except OSError as exc:
                log.warning("cannot publish metrics for the other balancer processes: %s", exc.strerror)
            await asyncio.sleep(self.interval)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
