"""The worker process: its service, its fronts, started and stopped as one.

``Worker.start`` builds the service (it needs the running loop) and opens the
REST listener; ``begin_drain`` reports not-ready; ``stop`` closes the listener,
lets accepted requests finish (bounded), then closes the service. The
signal handling and drain sequence are ``common.lifecycle``'s.
"""

from __future__ import annotations

import asyncio
import logging

from common.http_server import HttpServer
from common.lifecycle import serve_until_signalled
from common.registration import Heartbeat, Registration
from common.rest import render_error
from worker.config import WorkerConfig
from worker.handlers import WorkerHandlers
from worker.service import SERVER_NAME, WorkerService

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.name = f"worker {config.identity}"
        self.service: WorkerService | None = None
        self.http: HttpServer | None = None
        self.port = config.port
        self.heartbeat: Heartbeat | None = None
        self._leaving: asyncio.Task[None] | None = None

    async def start(self) -> None:
        service = self.service = WorkerService(self.config)
        limits = self.config.http_limits()
        self.http = HttpServer(WorkerHandlers(service).routes(), render_error, limits, server_name=SERVER_NAME)
        try:
            self.port = await self.http.start(self.config.host, self.config.port)
        except OSError:
            await service.close()
            raise
        service.ready = True
        log.info("%s serving %s on http://%s:%d", self.name, self.config.models, self.config.host, self.port)
        if self.config.register_redis:
            registration = Registration(self.config.identity, self.config.advertised_url(self.port))
            self.heartbeat = Heartbeat(self.config.register_redis, registration, self.config.register_ttl)
            self.heartbeat.start()

    def begin_drain(self) -> None:
        if self.service is not None:
            self.service.ready = False
        if self.heartbeat is not None and self._leaving is None:  # leave the registry first
            self._leaving = asyncio.get_running_loop().create_task(self.heartbeat.close())

    async def stop(self) -> None:
        self.begin_drain()
        if self._leaving is not None:
            await self._leaving
        if self.http is not None:
            await self.http.shutdown(self.config.shutdown_timeout)
        if self.service is not None:
            await self.service.close()


def configure_torch() -> None:
    """Inference runs as many requests at once as the pool has threads, one torch
    thread each, so the pool never oversubscribes the cores given to this worker."""
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


async def serve(config: WorkerConfig) -> int:
    configure_torch()
    return await serve_until_signalled(Worker(config), config.drain_delay)
