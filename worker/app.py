"""The worker process: its service, its fronts, started and stopped as one.

``Worker.start`` builds the service (it needs the running loop), indexes the
repository and the store, opens the REST listener (live, not yet ready) and
the gRPC one (``--grpc-port``, 0: none), warms the process up (each
architecture's one-time library set-up, so a cold model's first request pays
only its own load), then reports ready (gRPC health: SERVING); ``begin_drain``
reports not-ready (gRPC health: NOT_SERVING); ``stop`` closes the listeners,
lets accepted requests finish (bounded), then closes the service. The
signal handling and drain sequence are ``common.lifecycle``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from common.grpc_server import GrpcListener
from common.heap_trim import HeapTrimmer
from common.http_server import HttpServer
from common.lifecycle import freeze_start_up_objects, serve_until_signalled
from common.loop_lag import LoopLag
from common.process import parse_cpus, pin_to
from common.registration import Heartbeat, Registration
from common.rest import render_error
from worker.config import WorkerConfig
from worker.grpc_front import WorkerServicer
from worker.handlers import WorkerHandlers
from worker.service import SERVER_NAME, WorkerService
from worker.torch_threads import configure_process

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.name = f"worker {config.identity}"
        self.service: WorkerService | None = None
        self.http: HttpServer | None = None
        self.grpc: GrpcListener | None = None
        self.port = config.port
        self.grpc_port: int | None = None
        self._lag: asyncio.Task[None] | None = None
        self._trim: asyncio.Task[None] | None = None
        self._draining: asyncio.Task[None] | None = None
        self.heartbeat: Heartbeat | None = None
        self._leaving: asyncio.Task[None] | None = None

    async def start(self) -> None:
        service = self.service = WorkerService(self.config)
        limits = self.config.http_limits()
        self.http = HttpServer(WorkerHandlers(service).routes(), render_error, limits, server_name=SERVER_NAME)
        try:
            await service.start()
            self.port = await self.http.start(self.config.host, self.config.port)
            if self.config.grpc_port:
                self.grpc = GrpcListener(WorkerServicer(service).handlers(), self.config.grpc_max_message)
                self.grpc_port = service.grpc_port = await self.grpc.start(self.config.host, self.config.grpc_port)
            await service.warm_up()
            if self.grpc is not None:
                await self.grpc.set_serving()
        except BaseException:
            await self.stop()
            raise
        freeze_start_up_objects()  # after the warm-up, before the first request
        service.ready = True
        self._lag = asyncio.get_running_loop().create_task(LoopLag(service.metrics.registry).run())
        trimmer = HeapTrimmer(service.metrics.registry, self.config.heap_trim_interval)
        self._trim = asyncio.get_running_loop().create_task(trimmer.run())
        sources = [str(s) for s in (self.config.models, self.config.remote_store) if s is not None]
        grpc_note = f" and grpc {self.config.host}:{self.grpc_port}" if self.grpc_port else ""
        log.info(
            "%s serving %s on http://%s:%d%s",
            self.name, " and ".join(sources), self.config.host, self.port, grpc_note,
        )  # fmt: skip
        if self.config.register_redis:
            registration = Registration(self.config.identity, self.config.advertised_url(self.port))
            self.heartbeat = Heartbeat(self.config.register_redis, registration, self.config.register_ttl)
            self.heartbeat.start()

    def begin_drain(self) -> None:
        if self.service is not None:
            self.service.ready = False
        if self.grpc is not None and self._draining is None:
            self._draining = asyncio.get_running_loop().create_task(self.grpc.drain())
        if self.heartbeat is not None and self._leaving is None:  # leave the registry first
            self._leaving = asyncio.get_running_loop().create_task(self.heartbeat.close())

    async def stop(self) -> None:
        self.begin_drain()
        if self._leaving is not None:
            await self._leaving
        if self._draining is not None:
            await self._draining
        for task in (self._lag, self._trim):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        grace = self.config.shutdown_timeout
        await asyncio.gather(self._stop_grpc(grace), self._stop_http(grace))
        if self.service is not None:
            await self.service.close()

    async def _stop_grpc(self, grace: float) -> None:
        if self.grpc is not None:
            await self.grpc.stop(grace)

    async def _stop_http(self, grace: float) -> None:
        if self.http is not None:
            await self.http.shutdown(grace)


async def serve(config: WorkerConfig) -> int:
    if config.cpus:
        pin_to(parse_cpus(config.cpus))  # before torch starts a thread
    configure_process()  # torch is loaded by now: each pool thread sets its own too
    return await serve_until_signalled(Worker(config), config.drain_delay)
