"""The worker process: its service, its fronts, started and stopped as one.

``Worker.start`` builds the service (it needs the running loop), indexes the
repository and the store, opens the REST listener (live, not yet ready), warms
the process up (each architecture's one-time library set-up, so a cold model's
first request pays only its own load), then reports ready; ``begin_drain``
reports not-ready; ``stop`` closes the listener,
lets accepted requests finish (bounded), then closes the service. The
signal handling and drain sequence are ``common.lifecycle``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from common.http_server import HttpServer
from common.lifecycle import serve_until_signalled
from common.loop_lag import LoopLag
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
        self._lag: asyncio.Task[None] | None = None

    async def start(self) -> None:
        service = self.service = WorkerService(self.config)
        limits = self.config.http_limits()
        self.http = HttpServer(WorkerHandlers(service).routes(), render_error, limits, server_name=SERVER_NAME)
        try:
            await service.start()
            self.port = await self.http.start(self.config.host, self.config.port)
            await service.warm_up()
        except BaseException:
            await self.stop()
            raise
        service.ready = True
        self._lag = asyncio.get_running_loop().create_task(LoopLag(service.metrics.registry).run())
        sources = [str(s) for s in (self.config.models, self.config.remote_store) if s is not None]
        log.info("%s serving %s on http://%s:%d", self.name, " and ".join(sources), self.config.host, self.port)

    def begin_drain(self) -> None:
        if self.service is not None:
            self.service.ready = False

    async def stop(self) -> None:
        self.begin_drain()
        if self._lag is not None:
            self._lag.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag
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
