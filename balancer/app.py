"""Build the balancer's application from its config, and run it until SIGTERM.

Resources (the upstream session, the Redis pool, the index refresher) are
opened and closed in ``cleanup_ctx``; the one background task is owned and
cancelled on shutdown. On SIGTERM the balancer reports not-ready, stops
accepting, lets in-flight requests finish, then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from aiohttp import web

from balancer.config import BalancerConfig
from balancer.index import ModelIndex
from balancer.members import Members
from balancer.metrics import BalancerMetrics
from balancer.policy import make_policy
from balancer.router import Router
from balancer.server import STATE, BalancerState, add_routes
from balancer.transport import AiohttpTransport, Transport
from cache.redis_store import RedisStore
from cache.response_cache import ResponseCache
from common import __version__
from protocol.rest import error_middleware

log = logging.getLogger(__name__)


def build_app(config: BalancerConfig, transport: Transport | None = None) -> web.Application:
    app = web.Application(client_max_size=config.max_body_size, middlewares=[error_middleware])
    add_routes(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        upstream = transport or AiohttpTransport(
            config.upstream_connections, config.connect_timeout, config.try_timeout
        )
        members = Members(config.workers)
        index = ModelIndex(members, upstream)
        metrics = BalancerMetrics(lambda name: name in index.models)
        metrics.watch_inflight(members.inflight)
        remote = RedisStore(config.redis_url) if config.redis_url else None
        state = BalancerState(
            config=config,
            members=members,
            index=index,
            router=Router(
                members, make_policy(config.policy, config.balance_factor), upstream, metrics, config.max_retries
            ),
            cache=ResponseCache(config.cache_size, config.cache_ttl, config.cache_max_entry, remote),
            metrics=metrics,
            transport=upstream,
        )
        state.version = __version__
        app[STATE] = state
        refresher = asyncio.get_running_loop().create_task(_refresh_index(state))
        state.tasks.add(refresher)
        try:
            yield
        finally:
            state.draining = True
            for task in state.tasks:
                task.cancel()
            await asyncio.gather(*state.tasks, return_exceptions=True)
            await state.flights.cancel_all()
            await state.cache.close()
            await upstream.close()

    app.cleanup_ctx.append(lifecycle)
    return app


async def _refresh_index(state: BalancerState) -> None:
    """Refresh the index now, then every ``index_refresh`` seconds (every second
    until a first worker has answered)."""
    while True:
        with contextlib.suppress(Exception):
            await state.index.refresh()
        await asyncio.sleep(state.config.index_refresh if state.index.loaded else 0.5)


async def serve(config: BalancerConfig) -> None:
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=config.shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=2048)
    await site.start()
    log.info(
        "balancer on http://%s:%d routing to %d workers (policy %s, cache %s)",
        config.host, config.port, len(config.workers), config.policy, "redis" if config.redis_url else "in-process",
    )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("balancer draining")
    app[STATE].draining = True
    await runner.cleanup()
    log.info("balancer stopped")
