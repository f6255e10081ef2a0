"""The worker's transport-free service: typed requests in, typed answers out.

Everything a front (REST handlers, the gRPC servicer) needs: inference,
server and model metadata, readiness, the repository index and its load and
unload, statistics, the memory report. Fronts translate their wire format
into these calls and render what comes back (or the ``protocol.errors``
raised) in their own; no HTTP detail lives here.

Inference path: resolve the version in the catalog (memory only), then either
lease the resident model and queue for its batch at once (``try_acquire``: no
await before queuing), or, for a cold model, decode and check the request
first (validate before any side effect), page the model in (``acquire``: one
load per version however many ask), and queue. The lease is released when the
answer is ready, so a model is never evicted while its requests run; the
batch runs where the lease says (host or device). CPU work (decoding, torch,
encoding) runs in the inference pool.

The catalog is rescanned off the loop every ``--rescan-interval`` seconds and
on an explicit load; a version whose weights changed (another sha256) or that
left is dropped from memory, so its next request loads the new weights.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from common import __version__
from common.singleflight import SingleFlight
from protocol.errors import DeadlineExceeded, ModelNotFound, ModelUnavailable, ProtocolError
from protocol.names import check_name, check_version
from protocol.stats import ModelStats
from protocol.types import IndexEntry, ModelMetadata, ServerMetadata
from worker.batcher import Batcher
from worker.codecs import Codec
from worker.config import WorkerConfig
from worker.hierarchy import from_config
from worker.host_memory import process_memory
from worker.metrics import WorkerMetrics
from worker.model_config import ModelConfig
from worker.repository import ModelVersion
from worker.runner import LoadedModel, decode_and_check
from worker.stats import BatchTimes, ModelStatistics
from worker.tiers import DISK, REMOTE
from worker.torch_threads import one_torch_thread
from worker.triton_config import PLATFORMS, triton_model_config
from worker.warmup import warm_up_process

log = logging.getLogger(__name__)

SERVER_NAME = "affinity-serve-worker"
EXTENSIONS = ("model_repository", "statistics", "binary_tensor_data")

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class InferCall:
    """One inference as a front hands it over: the payload is whatever ``codec``
    decodes (raw JSON bytes for REST)."""

    model: str
    version: str | None
    payload: Any
    codec: Codec
    protocol: str = "rest"
    deadline: float | None = None  # time.monotonic() by which the answer is no use (X-Request-Timeout)


@dataclass(frozen=True, slots=True)
class InferAnswer:
    payload: Any  # the answer, encoded by the call's codec
    source: str  # where the model was when the request arrived: gpu, cpu, disk or remote


def _usable(entry: ModelVersion) -> ModelConfig:
    """A version with an unusable config is the model's own failure: 500, never a
    retryable 503 that would send the balancer to other workers for nothing."""
    if entry.config is None:
        raise ModelUnavailable(f"model '{entry.name}' version {entry.version} is unavailable: {entry.problem}")
    return entry.config


def _release_with(release: Callable[[], None]) -> Callable[[asyncio.Future[Any]], None]:
    def done(_: asyncio.Future[Any]) -> None:
        release()

    return done


class _Observers:
    """The memory manager reports to the metrics and to the per-model statistics."""

    def __init__(self, metrics: WorkerMetrics, stats: ModelStatistics) -> None:
        self._metrics, self._stats = metrics.memory, stats

    def loaded(self, key: Key, tier: str, seconds: float) -> None:
        self._metrics.loaded(key, tier, seconds)
        self._stats.loaded(key, seconds)

    def evicted(self, key: Key, tier: str) -> None:
        self._metrics.evicted(key, tier)


class WorkerService:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.stats = ModelStatistics()
        self.metrics = WorkerMetrics(self._known)
        self.tiers = from_config(config, _Observers(self.metrics, self.stats))
        self.catalog = self.tiers.catalog
        self.memory = self.tiers.memory
        self.metrics.memory.read_bytes_from(self.memory.tier_bytes)
        self.pool = ThreadPoolExecutor(config.inference_threads, "infer", initializer=one_torch_thread)
        self.batcher = Batcher(
            self.pool, asyncio.get_running_loop(), config.max_elements, self._on_batch,
            max_queue=config.max_queue, window=config.max_queue_delay,
        )  # fmt: skip
        self._scan_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="repository-scan")
        self._scans: SingleFlight[None] = SingleFlight()
        self._tasks: set[asyncio.Task[None]] = set()
        self.ready = False
        self.grpc_port: int | None = None  # set by the process once its gRPC listener is up

    def _known(self, name: str) -> bool:
        return self.catalog.has(name)

    async def start(self) -> None:
        """Index what is there (the disk cache's earlier downloads, the repository, the
        store), then rescan every ``rescan_interval`` seconds."""
        if self.tiers.disk_cache is not None:
            await asyncio.get_running_loop().run_in_executor(self._scan_pool, self.tiers.disk_cache.scan)
        await self.rescan()
        if self.config.rescan_interval > 0:
            task = asyncio.get_running_loop().create_task(self._rescan_every(self.config.rescan_interval))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def warm_up(self) -> None:
        """Pay each architecture's one-time library set-up now, not on a first request."""
        await asyncio.get_running_loop().run_in_executor(self._scan_pool, warm_up_process, self.memory.device)

    def resolve(self, name: str, version: str | None) -> ModelVersion:
        check_name(name)
        return self.catalog.resolve(name, check_version(version) if version is not None else None)

    # inference

    async def infer(self, call: InferCall) -> InferAnswer:
        started = time.perf_counter()
        code = 500
        key: Key | None = None
        try:
            entry = self.resolve(call.model, call.version)
            key = entry.key
            config = _usable(entry)
            lease = self.memory.try_acquire(key)
            payload = call.payload
            if lease is None:
                limit = self.config.max_elements
                loop = asyncio.get_running_loop()
                payload = await loop.run_in_executor(self.pool, decode_and_check, payload, call.codec, config, limit)
                lease = await self.memory.acquire(key)
                if call.deadline is not None and time.monotonic() >= call.deadline:
                    lease.release()
                    raise DeadlineExceeded("the request's deadline passed while its model was loading")
            try:
                pending = self.batcher.submit(lease.model, payload, call.codec, lease.device, call.deadline)
            except BaseException:
                lease.release()
                raise
            # Released when the answer is ready, even if this caller goes away first:
            # the batch still runs on the model, so it must stay resident until then.
            pending.add_done_callback(_release_with(lease.release))
            answer = InferAnswer(await asyncio.shield(pending), lease.source)
            code = 200
            return answer
        except ProtocolError as exc:
            code = exc.status
            raise
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.observe(call.model, code, call.protocol, elapsed)
            if key is not None:
                self.stats.request(key, code == 200, int(elapsed * 1e9))

    def _on_batch(self, model: LoadedModel, times: BatchTimes) -> None:
        for rows in times.rows:
            self.metrics.batch(model.name, rows)
        self.stats.batch((model.name, model.version), times)

    # metadata and health

    def server_metadata(self) -> ServerMetadata:
        capacity = self.config.capacity or self.memory.config.cpu_budget
        return ServerMetadata(
            SERVER_NAME, __version__, EXTENSIONS, self.config.identity, self.grpc_port, capacity=capacity
        )

    def model_metadata(self, name: str, version: str | None) -> ModelMetadata:
        entry = self.resolve(name, version)
        config = _usable(entry)
        versions = tuple(v.version for v in self.catalog.versions(entry.name)) if version is None else (entry.version,)
        return ModelMetadata(entry.name, versions, PLATFORMS[config.format], config.inputs, config.outputs)

    def model_ready(self, name: str, version: str | None) -> bool:
        status, _ = self._state(self.resolve(name, version))
        return status in ("READY", "LOADING")

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        entry = self.resolve(name, version)
        return triton_model_config(entry.name, _usable(entry))

    def _state(self, entry: ModelVersion) -> tuple[str, str]:
        """Triton-style state and reason for the index and readiness."""
        if entry.config is None:
            return "UNAVAILABLE", entry.problem
        if self.memory.loading(entry.key):
            return "LOADING", ""
        failure = self.memory.failure(entry.key)
        if failure is not None:
            return "UNAVAILABLE", failure
        return "READY", ""

    def _tier(self, entry: ModelVersion) -> str:
        """Where the version is now: gpu or cpu when resident, else disk or remote."""
        resident = self.memory.residency(entry.key)
        if resident is not None:
            return resident
        disk = self.tiers.disk_cache
        return DISK if entry.path is not None or (disk is not None and entry.key in disk) else REMOTE

    # the repository

    async def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        """One row per version, from memory (the catalog is rescanned in the background)."""
        rows = []
        for entry in self.catalog.all_versions():
            status, reason = self._state(entry)
            if ready_only and status != "READY":
                continue
            config = entry.config
            tier = self._tier(entry)
            rows.append(
                IndexEntry(
                    name=entry.name,
                    version=entry.version,
                    state=status,
                    reason=reason,
                    deterministic=config.deterministic if config else True,
                    cacheable=config.cache if config else True,
                    resident=tier in ("gpu", "cpu"),
                    sha256=entry.sha256,
                    cache_ttl=config.cache_ttl if config else None,
                    tier=tier,
                    min_replicas=config.min_replicas if config else 1,
                    max_replicas=config.max_replicas if config else None,
                    size=entry.size_bytes,
                )
            )
        return rows

    async def rescan(self, refresh: frozenset[str] = frozenset()) -> None:
        """Read the repository and the store again (off the loop) and install the view;
        ``refresh``: names whose remote files are read again too."""
        await self._scans.do(("scan", refresh), self._rescan(refresh))

    async def _rescan(self, refresh: frozenset[str]) -> None:
        view = await asyncio.get_running_loop().run_in_executor(self._scan_pool, self.catalog.scan, refresh)
        for key in self.catalog.install(view):
            entry = view.get(key)
            log.info("model %s version %s changed in the repository: dropped from memory", *key)
            await self.memory.unload(key)
            disk = self.tiers.disk_cache
            if disk is not None and entry is not None and entry.path is None:
                await disk.discard(key)  # the store holds new files under this version
        self.stats.forget(lambda key: view.get(key) is not None)

    async def _rescan_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.rescan()
            except Exception:  # a bug, not an outage (outages keep the last view): say so, keep going
                log.exception("repository rescan failed")

    async def load_model(self, name: str, version: str | None = None, pinned: bool | None = None) -> IndexEntry:
        """Triton's explicit load: find the model anew (rescan, its remote files re-read),
        page its latest (or the named) version in, and pin or unpin it when asked."""
        check_name(name)
        await self.rescan(frozenset({name}))
        entry = self.resolve(name, version)
        _usable(entry)
        if pinned:
            self.memory.pin(entry.key)  # before the load, so nothing can evict it in between
        (await self.memory.acquire(entry.key)).release()
        if pinned is False:
            self.memory.unpin(entry.key)
        log.info("model %s version %s loaded on request (into %s)", *entry.key, self._tier(entry))
        [row] = [r for r in await self.repository_index() if (r.name, r.version) == entry.key]
        return row

    async def unload_model(self, name: str) -> list[str]:
        """Triton's unload: every version of the model leaves memory (a version in use
        goes at its last release) and loses its pin; the next request loads it again.
        The versions that were resident."""
        check_name(name)
        if not self.catalog.has(name):
            raise ModelNotFound(name)
        unloaded = []
        for entry in self.catalog.versions(name):
            self.memory.unpin(entry.key)
            if await self.memory.unload(entry.key):
                unloaded.append(entry.version)
        log.info("model %s unloaded on request (versions %s)", name, ", ".join(unloaded) or "none resident")
        return unloaded

    # statistics and memory

    def model_stats(self, name: str, version: str | None) -> list[ModelStats]:
        """Triton's statistics for the named version, or for every version of the model."""
        entries = [self.resolve(name, version)] if version is not None else self.catalog.versions(check_name(name))
        if not entries:
            raise ModelNotFound(name)
        memory: dict[Key, list[tuple[str, int]]] = {}
        for tier in self.memory.snapshot().tiers:
            if tier.tier in ("gpu", "cpu"):
                for m in tier.models:
                    if not m.loading:
                        memory.setdefault((m.name, m.version), []).append((tier.tier, m.bytes))
        return [self.stats.of(e.key, memory.get(e.key, [])) for e in entries]

    async def memory_report(self) -> dict[str, Any]:
        """Each tier's budget, bytes used and models, beside the process's RSS and PSS."""
        report = self.memory.snapshot().to_json()
        device = self.memory.device
        report["device"] = device.name if device is not None else None
        usage = await asyncio.get_running_loop().run_in_executor(None, process_memory)
        report["process"] = usage.to_json()
        return report

    def render_metrics(self) -> bytes:
        return self.metrics.render()

    async def close(self) -> None:
        self.ready = False
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._scans.cancel_all()
        await self.tiers.close()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self._scan_pool.shutdown(wait=True, cancel_futures=True)
