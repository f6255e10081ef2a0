"""Wire the balancer from its config and run it until SIGTERM.

Resources (the upstream session, the Redis pool, the index refresher) are
opened in ``Balancer.start`` and closed in ``Balancer.stop``; the background
task is owned and cancelled on shutdown. On SIGTERM the balancer reports
not-ready, stops accepting, lets in-flight requests finish, then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from balancer.config import BalancerConfig
from balancer.http_client import HttpClient
from balancer.index import ModelIndex
from balancer.members import Members
from balancer.metrics import BalancerMetrics
from balancer.policy import make_policy
from balancer.router import Router
from balancer.server import BalancerService
from balancer.transport import Transport
from cache.redis_store import RedisStore
from cache.response_cache import ResponseCache
from common.http_server import HttpLimits, HttpServer
from protocol.rest import render_error

log = logging.getLogger(__name__)


class Balancer:
    def __init__(self, config: BalancerConfig, transport: Transport | None = None) -> None:
        self.config = config
        self.transport: Transport = transport or HttpClient(
            config.upstream_connections, config.connect_timeout, config.try_timeout
        )
        members = Members(config.workers)
        index = ModelIndex(members, self.transport)
        metrics = BalancerMetrics(lambda name: name in index.models, members.inflight)
        remote = RedisStore(config.redis_url) if config.redis_url else None
        policy = make_policy(config.policy, config.balance_factor)
        self.service = BalancerService(
            config=config,
            members=members,
            index=index,
            router=Router(members, policy, self.transport, metrics, config.max_retries),
            cache=ResponseCache(config.cache_size, config.cache_ttl, config.cache_max_entry, remote),
            metrics=metrics,
        )
        self.http = HttpServer(self.service.routes(), render_error, HttpLimits(max_body=config.max_body_size))
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = config.port

    async def start(self) -> int:
        try:
            self.port = await self.http.start(self.config.host, self.config.port)
        except OSError:
            await self.transport.close()
            raise
        task = asyncio.get_running_loop().create_task(self._refresh_index())
        self._tasks.add(task)
        return self.port

    async def _refresh_index(self) -> None:
        """Refresh the index now, then every ``index_refresh`` seconds (twice a
        second until a first worker has answered)."""
        index = self.service.index
        while True:
            with contextlib.suppress(Exception):
                await index.refresh()
            await asyncio.sleep(self.config.index_refresh if index.loaded else 0.5)

    async def stop(self) -> None:
        self.service.draining = True
        # Not ready but still serving, so load balancers and Kubernetes stop sending first.
        await asyncio.sleep(self.config.drain_delay)
        await self.http.shutdown(self.config.shutdown_timeout)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.service.flights.cancel_all()
        await self.service.cache.close()
        await self.transport.close()


async def serve(config: BalancerConfig) -> None:
    balancer = Balancer(config)
    port = await balancer.start()
    log.info(
        "balancer on http://%s:%d routing to %d workers (policy %s, cache %s)",
        config.host, port, len(config.workers), config.policy, "redis" if config.redis_url else "in-process",
    )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("balancer draining")
    await balancer.stop()
    log.info("balancer stopped")
