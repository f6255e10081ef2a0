"""The worker's V2 REST server: health, metadata, inference, repository index.

A thin aiohttp layer over the repository, the registry and the runner. CPU
work (decoding, torch, encoding) runs in the inference pool; the event loop
only moves bytes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aiohttp import web

from common import __version__
from protocol.errors import BadRequest, ProtocolError
from protocol.json_codec import loads_object
from protocol.names import check_name, check_version
from protocol.rest import JSON, error_middleware, json_response
from protocol.types import IndexEntry, ModelMetadata, ServerMetadata
from worker.config import WorkerConfig
from worker.errors import ModelLoadFailed
from worker.metrics import WorkerMetrics
from worker.model_config import ModelConfig
from worker.registry import ModelRegistry
from worker.repository import ModelVersion, Repository
from worker.runner import decode_and_check, decode_and_execute, execute
from worker.triton_config import triton_model_config

log = logging.getLogger(__name__)

SERVER_NAME = "affinity-serve-worker"
EXTENSIONS = ("model_repository",)


@dataclass
class WorkerState:
    config: WorkerConfig
    repository: Repository
    registry: ModelRegistry
    metrics: WorkerMetrics
    pool: ThreadPoolExecutor
    ready: bool = False
    inflight: int = 0
    version: str = "0"
    background: set[asyncio.Task[None]] = field(default_factory=set)


STATE = web.AppKey("state", WorkerState)


def _entry(request: web.Request) -> ModelVersion:
    state = request.app[STATE]
    name = check_name(request.match_info["name"])
    version = request.match_info.get("version")
    return state.repository.resolve(name, check_version(version) if version is not None else None)


def _usable(entry: ModelVersion) -> ModelConfig:
    """A version with an unusable config is the model's own failure: 500, never a
    retryable 503 that would send the balancer to other workers for nothing."""
    if entry.config is None:
        raise ModelLoadFailed(f"model '{entry.name}' version {entry.version} is unavailable: {entry.problem}")
    return entry.config


async def server_metadata(request: web.Request) -> web.Response:
    meta = ServerMetadata(SERVER_NAME, request.app[STATE].version, EXTENSIONS)
    return json_response(meta.to_json())


async def live(request: web.Request) -> web.Response:
    return json_response({"live": True})


async def ready(request: web.Request) -> web.Response:
    ok = request.app[STATE].ready
    return json_response({"ready": ok}, 200 if ok else 503)


async def model_metadata(request: web.Request) -> web.Response:
    entry = _entry(request)
    state = request.app[STATE]
    config = _usable(entry)
    versions = tuple(v.version for v in state.repository.versions(entry.name))
    if "version" in request.match_info:
        versions = (entry.version,)
    meta = ModelMetadata(entry.name, versions, "pytorch_safetensors", config.inputs, config.outputs)
    return json_response(meta.to_json())


async def model_ready(request: web.Request) -> web.Response:
    entry = _entry(request)
    status, _ = request.app[STATE].registry.state(entry)
    ok = status in ("READY", "LOADING")
    return json_response({"name": entry.name, "ready": ok}, 200 if ok else 503)


async def model_config(request: web.Request) -> web.Response:
    entry = _entry(request)
    return json_response(triton_model_config(entry.name, _usable(entry)))


async def infer(request: web.Request) -> web.Response:
    started = time.perf_counter()
    state = request.app[STATE]
    name = request.match_info["name"]
    code = 500
    state.inflight += 1
    try:
        entry = _entry(request)
        config = _usable(entry)
        body = await request.read()
        loop = asyncio.get_running_loop()
        model = state.registry.resident(entry)
        limit = state.config.max_elements
        if model is not None:
            source = "cpu"
            answer = await loop.run_in_executor(state.pool, decode_and_execute, model, body, limit)
        else:
            # Check the request before paying for a load (validate before any side effect).
            parsed = await loop.run_in_executor(state.pool, decode_and_check, body, config, limit)
            model, source = await state.registry.acquire(entry)
            answer = await loop.run_in_executor(state.pool, execute, model, parsed)
        code = 200
        return web.Response(body=answer, content_type=JSON, headers={"X-Model-Source": source})
    except ProtocolError as exc:
        code = exc.status
        raise
    except web.HTTPException as exc:
        code = exc.status
        raise
    finally:
        state.inflight -= 1
        state.metrics.observe(name, code, time.perf_counter() - started)


async def repository_index(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await request.read()
    only_ready = False
    if body.strip():
        filters = loads_object(body)
        ready_filter = filters.get("ready", False)
        if not isinstance(ready_filter, bool):
            raise BadRequest("'ready' must be a boolean")
        only_ready = ready_filter
    state.repository.scan()
    rows = []
    for entry in state.repository.all_versions():
        status, reason = state.registry.state(entry)
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
                resident=state.registry.resident(entry) is not None,
            ).to_json()
        )
    return json_response(rows)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[STATE].metrics.render(), content_type="text/plain", charset="utf-8")


def build_app(config: WorkerConfig) -> web.Application:
    repository = Repository(config.models)
    repository.scan()
    worker_metrics = WorkerMetrics(repository.has)
    state = WorkerState(
        config=config,
        repository=repository,
        registry=ModelRegistry(worker_metrics, config.max_loads),
        metrics=worker_metrics,
        pool=ThreadPoolExecutor(max_workers=config.inference_threads, thread_name_prefix="infer"),
    )
    state.version = __version__
    app = web.Application(client_max_size=config.max_body_size, middlewares=[error_middleware])
    app[STATE] = state
    v = "/versions/{version}"
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    for prefix in ("/v2/models/{name}", "/v2/models/{name}" + v):
        app.router.add_get(prefix, model_metadata)
        app.router.add_get(prefix + "/ready", model_ready)
        app.router.add_get(prefix + "/config", model_config)
        app.router.add_post(prefix + "/infer", infer)
    app.router.add_post("/v2/repository/index", repository_index)
    app.router.add_get("/metrics", metrics)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        state.ready = True
        yield
        state.ready = False
        await state.registry.close()
        state.pool.shutdown(wait=True, cancel_futures=True)

    app.cleanup_ctx.append(lifecycle)
    return app


def configure_torch(threads: int) -> None:
    """Inference runs ``threads`` requests at once, one torch thread each, so the
    pool never oversubscribes the cores given to this worker."""
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    del threads


async def serve(config: WorkerConfig) -> None:
    configure_torch(config.inference_threads)
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=config.shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=1024)
    await site.start()
    log.info("worker %s serving %s on http://%s:%d", config.identity, config.models, config.host, config.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("worker %s draining", config.identity)
    app[STATE].ready = False
    await runner.cleanup()
    log.info("worker %s stopped", config.identity)
