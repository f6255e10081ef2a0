"""The balancer process: its service and fronts, wired from config, started and
stopped as one.

Resources (the upstream client, the Redis pool, the membership and index
refresher) are opened in ``Balancer.start`` and closed in ``Balancer.stop``;
the background task is owned and cancelled on shutdown. Signals and the drain
sequence are ``common.lifecycle``'s.
"""

from __future__ import annotations

import asyncio
import logging

from balancer.config import BalancerConfig
from balancer.discovery import StaticDiscovery
from balancer.grpc_client import GrpcUpstream
from balancer.grpc_front import BalancerServicer
from balancer.handlers import BalancerHandlers
from balancer.http_client import HttpClient
from balancer.index import ModelIndex
from balancer.members import Members
from balancer.metrics import BalancerMetrics
from balancer.policy import make_policy
from balancer.router import Router
from balancer.service import BalancerService
from balancer.transport import Transport
from cache.breaker import CircuitBreaker
from cache.redis_store import RedisStore
from cache.response_cache import ResponseCache
from common.grpc_server import GrpcListener
from common.http_server import HttpServer
from common.lifecycle import serve_until_signalled
from common.loop_lag import LoopLag
from common.rest import render_error

log = logging.getLogger(__name__)


class Balancer:
    name = "balancer"

    def __init__(self, config: BalancerConfig, transport: Transport | None = None) -> None:
        self.config = config
        self.transport: Transport = transport or HttpClient(
            config.upstream_connections,
            config.connect_timeout,
            config.try_timeout,
            max_answer=config.max_upstream_answer,
        )
        self.discovery = StaticDiscovery(config.workers, self.transport)
        members = Members()
        index = ModelIndex(members, self.transport)
        metrics = BalancerMetrics(lambda name: name in index.models, members.inflight)
        remote = None
        if config.redis_url:
            breaker = CircuitBreaker(cooldown=config.redis_breaker_cooldown)
            remote = RedisStore(config.redis_url, config.redis_timeout, breaker)
        policy = make_policy(config.policy, config.balance_factor)
        self.grpc_upstream = GrpcUpstream(config.grpc_max_message) if config.grpc_port else None
        self.service = BalancerService(
            config=config,
            members=members,
            index=index,
            router=Router(members, policy, self.transport, metrics, config.max_retries),
            cache=ResponseCache(config.cache_size, config.cache_ttl, config.cache_max_entry, remote),
            metrics=metrics,
            grpc=self.grpc_upstream,
        )
        self.http = HttpServer(BalancerHandlers(self.service).routes(), render_error, config.http_limits())
        self.grpc: GrpcListener | None = None
        if config.grpc_port:
            self.grpc = GrpcListener(BalancerServicer(self.service).handlers(), config.grpc_max_message)
        self._tasks: set[asyncio.Task[None]] = set()
        self.loop_lag = LoopLag(metrics.registry)
        self.port = config.port
        self.grpc_port: int | None = None

    async def start(self) -> None:
        await self.service.rules.start()
        try:
            self.port = await self.http.start(self.config.host, self.config.port)
            if self.grpc is not None:
                self.grpc_port = await self.grpc.start(self.config.host, self.config.grpc_port)
                await self.grpc.set_serving()
        except OSError:
            await self.http.shutdown(0)
            await self.service.rules.close()
            await self.transport.close()
            await self.service.cache.close()
            raise
        loop = asyncio.get_running_loop()
        self._tasks.add(loop.create_task(self._refresh()))
        self._tasks.add(loop.create_task(self.loop_lag.run()))
        log.info(
            "balancer on http://%s:%d%s routing to %d workers (policy %s, cache %s)",
            self.config.host, self.port, f" and grpc {self.config.host}:{self.grpc_port}" if self.grpc_port else "",
            len(self.config.workers), self.config.policy, "redis" if self.config.redis_url else "in-process",
        )  # fmt: skip

    async def refresh(self) -> None:
        """Learn the workers' ids, apply membership changes, refresh the index."""
        self.service.members.set_members(await self.discovery.members())
        await self.service.index.refresh()

    async def _refresh(self) -> None:
        """Now, then every ``index_refresh`` seconds (twice a second until ready)."""
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug, not an outage (outages are handled inside): say so, keep going
                log.exception("membership or index refresh failed")
            await asyncio.sleep(self.config.index_refresh if self.service.ready else 0.5)

    def begin_drain(self) -> None:
        self.service.draining = True
        if self.grpc is not None:
            task = asyncio.get_running_loop().create_task(self.grpc.drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        self.begin_drain()
        grace = self.config.shutdown_timeout
        if self.grpc is not None:
            await asyncio.gather(self.http.shutdown(grace), self.grpc.stop(grace))
        else:
            await self.http.shutdown(grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.service.flights.cancel_all()
        await self.service.rules.close()
        await self.service.cache.close()
        await self.transport.close()
        if self.grpc_upstream is not None:
            await self.grpc_upstream.close()


async def serve(config: BalancerConfig) -> int:
    return await serve_until_signalled(Balancer(config), config.drain_delay)
