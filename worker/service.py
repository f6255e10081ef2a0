"""The worker's transport-free service: typed requests in, typed answers out.

Everything a front (REST handlers, the gRPC servicer) needs: inference,
server and model metadata, readiness, the repository index. Fronts translate
their wire format into these calls and render what comes back (or the
``protocol.errors`` raised) in their own; no HTTP detail lives here.

Inference path: resolve the version, then either the resident model's batch
queue (no await before queuing) or, for a cold model, decode and check the
request first (validate before any side effect), load the model once, and
queue. CPU work (decoding, torch, encoding) runs in the inference pool.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from common import __version__
from protocol.errors import DeadlineExceeded, ModelUnavailable, ProtocolError
from protocol.names import check_name, check_version
from protocol.types import IndexEntry, ModelMetadata, ServerMetadata
from worker.batcher import Batcher
from worker.codecs import Codec
from worker.config import WorkerConfig
from worker.metrics import WorkerMetrics
from worker.model_config import ModelConfig
from worker.registry import ModelRegistry
from worker.repository import ModelVersion, Repository
from worker.runner import decode_and_check
from worker.triton_config import triton_model_config

SERVER_NAME = "affinity-serve-worker"
EXTENSIONS = ("model_repository",)
PLATFORM = "pytorch_safetensors"


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


class WorkerService:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.repository = Repository(config.models)
        self.repository.scan()
        self.metrics = WorkerMetrics(self.repository.has)
        self.registry = ModelRegistry(self.metrics, config.max_loads)
        self.pool = ThreadPoolExecutor(max_workers=config.inference_threads, thread_name_prefix="infer")
        self.batcher = Batcher(self.pool, asyncio.get_running_loop(), config.max_elements, self.metrics.batch)
        self.ready = False

    def resolve(self, name: str, version: str | None) -> ModelVersion:
        check_name(name)
        return self.repository.resolve(name, check_version(version) if version is not None else None)

    # inference

    async def infer(self, call: InferCall) -> InferAnswer:
        started = time.perf_counter()
        code = 500
        try:
            entry = self.resolve(call.model, call.version)
            config = _usable(entry)
            model = self.registry.resident(entry)
            if model is not None:
                answer = InferAnswer(await self.batcher.submit(model, call.payload, call.codec), "cpu")
            else:
                limit = self.config.max_elements
                loop = asyncio.get_running_loop()
                request = await loop.run_in_executor(
                    self.pool, decode_and_check, call.payload, call.codec, config, limit
                )
                model, source = await self.registry.acquire(entry)
                if call.deadline is not None and time.monotonic() >= call.deadline:
                    raise DeadlineExceeded("the request's deadline passed while its model was loading")
                answer = InferAnswer(await self.batcher.submit(model, request, call.codec), source)
            code = 200
            return answer
        except ProtocolError as exc:
            code = exc.status
            raise
        finally:
            self.metrics.observe(call.model, code, call.protocol, time.perf_counter() - started)

    # metadata and health

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, __version__, EXTENSIONS, self.config.identity, self.config.reported_capacity)

    def model_metadata(self, name: str, version: str | None) -> ModelMetadata:
        entry = self.resolve(name, version)
        config = _usable(entry)
        if version is None:
            versions = tuple(v.version for v in self.repository.versions(entry.name))
        else:
            versions = (entry.version,)
        return ModelMetadata(entry.name, versions, PLATFORM, config.inputs, config.outputs)

    def model_ready(self, name: str, version: str | None) -> bool:
        status, _ = self.registry.state(self.resolve(name, version))
        return status in ("READY", "LOADING")

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        entry = self.resolve(name, version)
        return triton_model_config(entry.name, _usable(entry))

    async def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        await asyncio.get_running_loop().run_in_executor(None, self.repository.scan)
        rows = []
        for entry in self.repository.all_versions():
            status, reason = self.registry.state(entry)
            if ready_only and status != "READY":
                continue
            config = entry.config
            rows.append(
                IndexEntry(
                    name=entry.name,
                    version=entry.version,
                    state=status,
                    reason=reason,
                    deterministic=config.deterministic if config else True,
                    cacheable=config.cache if config else True,
                    resident=self.registry.resident(entry) is not None,
                    sha256=entry.sha256,
                    cache_ttl=config.cache_ttl if config else None,
                    min_replicas=config.min_replicas if config else 1,
                    max_replicas=config.max_replicas if config else None,
                )
            )
        return rows

    def render_metrics(self) -> bytes:
        return self.metrics.render()

    async def close(self) -> None:
        self.ready = False
        await self.registry.close()
        self.pool.shutdown(wait=True, cancel_futures=True)
