"""Which workers hold which model in memory, as far as the balancer can tell.

Two sources: the repository index (each row's ``resident_on``, a snapshot that
replaces what was known at each refresh), and every answer in between: a
worker that answered for a model with ``X-Model-Source`` holds it now (``cpu``
or ``gpu``: it was resident; ``disk`` or ``remote``: it was loaded for this
request). An eviction shows at the next refresh. The affinity policy reads
``holds`` to spill onto a worker that already has the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

SOURCES = frozenset(("gpu", "cpu", "disk", "remote"))


class Residency:
    def __init__(self) -> None:
        self._on: dict[str, set[str]] = {}

    def holds(self, model: str, worker: str) -> bool:
        workers = self._on.get(model)
        return workers is not None and worker in workers

    def on(self, model: str) -> frozenset[str]:
        return frozenset(self._on.get(model, ()))

    def seen(self, model: str, worker: str, source: str | None) -> None:
        """A worker answered for ``model``; ``source`` is its X-Model-Source."""
        if source is None or source not in SOURCES:
            return
        workers = self._on.get(model)
        if workers is None:
            self._on[model] = {worker}
        elif worker not in workers:
            workers.add(worker)

    def replace(self, snapshot: Mapping[str, Iterable[str]]) -> None:
        """The index's view, as of its refresh."""
        self._on = {model: set(workers) for model, workers in snapshot.items() if workers}

    def models_on(self, worker: str) -> list[str]:
        return sorted(m for m, workers in self._on.items() if worker in workers)
