"""The worker's V2 REST handlers: health, metadata, inference, repository index.

A thin layer over the repository, the registry and the batcher. CPU work
(decoding, torch, encoding) runs in the inference pool; the event loop only
moves bytes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from common import __version__
from common.http_router import Router
from common.http_server import HttpLimits, HttpServer, Request, Response
from protocol.errors import BadRequest, ProtocolError
from protocol.json_body import loads_object
from protocol.names import check_name, check_version
from protocol.rest import JSON, V2Handlers, check_json_request, json_response, render_error, v2_router
from protocol.types import IndexEntry, ModelMetadata, ServerMetadata
from worker.batcher import Batcher
from worker.config import WorkerConfig
from worker.errors import ModelLoadFailed
from worker.metrics import WorkerMetrics
from worker.model_config import ModelConfig
from worker.registry import ModelRegistry
from worker.repository import ModelVersion, Repository
from worker.runner import decode_and_check
from worker.triton_config import triton_model_config

log = logging.getLogger(__name__)

SERVER_NAME = "affinity-serve-worker"
EXTENSIONS = ("model_repository",)


def _usable(entry: ModelVersion) -> ModelConfig:
    """A version with an unusable config is the model's own failure: 500, never a
    retryable 503 that would send the balancer to other workers for nothing."""
    if entry.config is None:
        raise ModelLoadFailed(f"model '{entry.name}' version {entry.version} is unavailable: {entry.problem}")
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

    def routes(self) -> Router:
        return v2_router(
            V2Handlers(
                infer=self.infer,
                live=self.live,
                ready=self.health_ready,
                server_metadata=self.server_metadata,
                model_metadata=self.model_metadata,
                model_ready=self.model_ready,
                model_config=self.model_config,
                repository_index=self.repository_index,
                metrics=self.render_metrics,
            )
        )

    def _entry(self, request: Request) -> ModelVersion:
        name = check_name(request.match["name"])
        version = request.match.get("version")
        return self.repository.resolve(name, check_version(version) if version is not None else None)

    async def infer(self, request: Request) -> Response:
        started = time.perf_counter()
        name = request.match["name"]
        code = 500
        try:
            entry = self._entry(request)
            config = _usable(entry)
            check_json_request(request.headers)
            loop = asyncio.get_running_loop()
            model = self.registry.resident(entry)
            if model is not None:
                source = "cpu"
                answer = await self.batcher.submit(model, request.body)
            else:
                # Check the request before paying for a load (validate before any side effect).
                limit = self.config.max_elements
                parsed = await loop.run_in_executor(self.pool, decode_and_check, request.body, config, limit)
                model, source = await self.registry.acquire(entry)
                answer = await self.batcher.submit(model, parsed)
            code = 200
            return Response(200, answer, JSON, {"X-Model-Source": source})
        except ProtocolError as exc:
            code = exc.status
            raise
        finally:
            self.metrics.observe(name, code, time.perf_counter() - started)

    def server_metadata(self, request: Request) -> Response:
        return json_response(ServerMetadata(SERVER_NAME, __version__, EXTENSIONS).to_json())

    def live(self, request: Request) -> Response:
        return json_response({"live": True})

    def health_ready(self, request: Request) -> Response:
        return json_response({"ready": self.ready}, 200 if self.ready else 503)

    def model_metadata(self, request: Request) -> Response:
        entry = self._entry(request)
        config = _usable(entry)
        versions = tuple(v.version for v in self.repository.versions(entry.name))
        if "version" in request.match:
            versions = (entry.version,)
        meta = ModelMetadata(entry.name, versions, "pytorch_safetensors", config.inputs, config.outputs)
        return json_response(meta.to_json())

    def model_ready(self, request: Request) -> Response:
        entry = self._entry(request)
        status, _ = self.registry.state(entry)
        ok = status in ("READY", "LOADING")
        return json_response({"name": entry.name, "ready": ok}, 200 if ok else 503)

    def model_config(self, request: Request) -> Response:
        entry = self._entry(request)
        return json_response(triton_model_config(entry.name, _usable(entry)))

    def repository_index(self, request: Request) -> Response:
        only_ready = False
        if request.body.strip():
            flag = loads_object(request.body).get("ready", False)
            if not isinstance(flag, bool):
                raise BadRequest("'ready' must be a boolean")
            only_ready = flag
        self.repository.scan()
        rows = []
        for entry in self.repository.all_versions():
            status, reason = self.registry.state(entry)
            if only_ready and status != "READY":
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
                ).to_json()
            )
        return json_response(rows)

    def render_metrics(self, request: Request) -> Response:
        return Response(200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")

    async def close(self) -> None:
        self.ready = False
        await self.registry.close()
        self.pool.shutdown(wait=True, cancel_futures=True)


def configure_torch() -> None:
    """Inference runs as many requests at once as the pool has threads, one torch
    thread each, so the pool never oversubscribes the cores given to this worker."""
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


async def serve(config: WorkerConfig) -> None:
    configure_torch()
    service = WorkerService(config)
    limits = HttpLimits(max_body=config.max_body_size)
    http = HttpServer(service.routes(), render_error, limits, server_name=SERVER_NAME)
    port = await http.start(config.host, config.port)
    service.ready = True
    log.info("worker %s serving %s on http://%s:%d", config.identity, config.models, config.host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("worker %s draining", config.identity)
    service.ready = False
    # Not ready but still serving, so load balancers and Kubernetes stop sending first.
    await asyncio.sleep(config.drain_delay)
    await http.shutdown(config.shutdown_timeout)
    await service.close()
    log.info("worker %s stopped", config.identity)
