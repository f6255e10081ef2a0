"""Which model versions are resident, and loading them exactly once.

A model is loaded on first use: concurrent requests for a cold model share one
load (singleflight per model version, no global lock), at most ``max_loads``
loads run at once, and loads run in their own thread pool so they never block
inference. A version whose load or warm-up fails is UNAVAILABLE with the reason
until a later request tries again. (The tiered memory manager replaces the
simple resident set with budgets and eviction.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from common.singleflight import SingleFlight
from protocol.errors import ModelUnavailable, ProtocolError
from worker.loader import load_module
from worker.metrics import WorkerMetrics
from worker.repository import ModelVersion
from worker.runner import LoadedModel, warm_up

log = logging.getLogger(__name__)

Key = tuple[str, str]


class ModelRegistry:
    def __init__(self, metrics: WorkerMetrics, max_loads: int = 1) -> None:
        self._resident: dict[Key, tuple[str, LoadedModel]] = {}  # (weights sha256, model)
        self._failed: dict[Key, str] = {}
        self._loads: SingleFlight[LoadedModel] = SingleFlight()
        self._pool = ThreadPoolExecutor(max_workers=max_loads, thread_name_prefix="load")
        self._metrics = metrics

    def resident(self, entry: ModelVersion) -> LoadedModel | None:
        """The loaded model of this version, unless its weights changed on disk since."""
        found = self._resident.get(entry.key)
        if found is None or found[0] != entry.sha256:
            return None
        return found[1]

    def state(self, entry: ModelVersion) -> tuple[str, str]:
        """Triton-style state and reason for the repository index."""
        if entry.config is None:
            return "UNAVAILABLE", entry.problem
        if (*entry.key, entry.sha256) in self._loads:
            return "LOADING", ""
        if entry.key in self._failed:
            return "UNAVAILABLE", self._failed[entry.key]
        return "READY", ""

    async def acquire(self, entry: ModelVersion) -> tuple[LoadedModel, str]:
        """The resident model and where it was when asked ("cpu" or "disk")."""
        model = self.resident(entry)
        if model is not None:
            return model, "cpu"
        model, _ = await self._loads.do((*entry.key, entry.sha256), self._load(entry))
        return model, "disk"

    async def _load(self, entry: ModelVersion) -> LoadedModel:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            model = await loop.run_in_executor(self._pool, _load_and_warm, entry)
        except ProtocolError as exc:
            self._failed[entry.key] = exc.message
            log.warning("load failed: %s", exc.message)
            raise
        except Exception as exc:  # torch raises a wide range; report the kind, keep the worker up
            reason = f"model '{entry.name}' version {entry.version} failed to load ({type(exc).__name__})"
            self._failed[entry.key] = reason
            log.exception("load failed: %s", reason)
            raise ModelUnavailable(reason) from exc
        elapsed = time.perf_counter() - started
        self._failed.pop(entry.key, None)
        self._resident[entry.key] = (entry.sha256, model)
        self._metrics.model_loaded(entry.name, elapsed)
        log.info("loaded model %s version %s in %.3fs", entry.name, entry.version, elapsed)
        return model

    async def close(self) -> None:
        await self._loads.cancel_all()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _load_and_warm(entry: ModelVersion) -> LoadedModel:
    assert entry.config is not None
    model = LoadedModel(entry.name, entry.version, entry.config, load_module(entry))
    if entry.config.warmup:
        warm_up(model)
    return model
