"""The balancer process: its service and fronts, wired from config, started and
stopped as one.

Resources (the upstream client, the Redis pool, discovery) are opened in
``Balancer.start`` and closed in ``Balancer.stop``. Background tasks, each
owned and cancelled on shutdown:

    membership   discovery every ``--discovery-interval`` (twice a second until ready)
    index        the repository index every ``--index-refresh``; it also
                 refreshes residency and per-model replica limits
    probes       ``/v2/health/ready`` on every member every ``--health-interval``
    upkeep       four times a second: ejections that ran out, replica counts

Signals and the drain sequence are ``common.lifecycle``'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from balancer.admin import AdminService
from balancer.budget import RetryBudget
from balancer.config import BalancerConfig
from balancer.discovery import AddressSource, Discovery, StaticSource
from balancer.grpc_client import GrpcUpstream
from balancer.grpc_front import BalancerServicer
from balancer.handlers import BalancerHandlers
from balancer.health import HealthBook
from balancer.http_client import HttpClient
from balancer.index import ModelIndex
from balancer.members import Members
from balancer.metrics import BalancerMetrics
from balancer.policy import PolicyContext, make_policy
from balancer.prober import Prober
from balancer.processes import Supervisor
from balancer.replicas import ReplicaScaler
from balancer.residency import Residency
from balancer.router import Router
from balancer.service import BalancerService
from balancer.transport import Transport
from cache.breaker import CircuitBreaker
from cache.redis_store import RedisStore
from cache.response_cache import ResponseCache
from common.grpc_server import GrpcListener
from common.heap_trim import HeapTrimmer
from common.http_server import HttpServer
from common.lifecycle import freeze_start_up_objects, serve_until_signalled
from common.loop_lag import LoopLag
from common.rest import render_error
from common.shared_metrics import SharedMetrics

log = logging.getLogger(__name__)

UPKEEP_INTERVAL = 0.25
STARTUP_LEARN_SECONDS = 10.0  # a process sharing its port waits at most this long for workers before it listens


def address_source(config: BalancerConfig) -> AddressSource:
    if config.workers_dns:
        from balancer.dns import DnsSource

        return DnsSource(config.workers_dns, config.dns_resolver)
    if config.workers_redis:
        from balancer.redis_members import RedisSource

        return RedisSource(config.workers_redis)
    return StaticSource(config.workers)


class Balancer:
    name = "balancer"

    def __init__(
        self, config: BalancerConfig, transport: Transport | None = None, metrics_dir: Path | None = None
    ) -> None:
        self.config = config
        self.transport: Transport = transport or HttpClient(
            config.upstream_connections,
            config.connect_timeout,
            config.try_timeout,
            max_answer=config.max_upstream_answer,
        )
        self.source = address_source(config)
        self.discovery = Discovery(self.source, self.transport)
        health = HealthBook(config.health_settings())
        members = Members(health=health, panic_threshold=config.panic_threshold / 100)
        index = ModelIndex(members, self.transport)
        metrics = BalancerMetrics(lambda name: name in index.models, members.inflight)
        health.on_eject = metrics.ejection
        self.replicas = ReplicaScaler(config.replica_settings())
        self.residency = Residency()
        index.on_refresh.append(self._index_refreshed)
        remote = None
        if config.redis_url:
            breaker = CircuitBreaker(cooldown=config.redis_breaker_cooldown)
            remote = RedisStore(config.redis_url, config.redis_timeout, breaker)
        context = PolicyContext(members.shares, self.residency.holds, self.replicas.counts)
        policy = make_policy(config.policy, config.balance_factor, context, config.cold_spill_slack)
        budget = RetryBudget(config.retry_ratio, config.retry_floor, config.retry_window)
        router = Router(
            members, policy, self.transport, metrics, config.router_settings(), budget, self.replicas, self.residency
        )
        self.grpc_upstream = GrpcUpstream(config.grpc_max_message) if config.grpc_port else None
        self.service = BalancerService(
            config=config,
            members=members,
            index=index,
            router=router,
            cache=ResponseCache(config.cache_size, config.cache_ttl, config.cache_max_entry, remote),
            metrics=metrics,
            grpc=self.grpc_upstream,
        )
        self.admin = AdminService(
            members, index, self.transport, self.replicas, self.residency, config.policy, config.admin_token,
            config.shutdown_timeout,
        )  # fmt: skip
        metrics.watch_cluster(self._ring_size, self._health_states, self._replica_counts, self._replica_trials)
        self.prober = Prober(members, self.transport, config.health_interval, config.health_timeout)
        routes = BalancerHandlers(self.service, self.admin, config.keys).routes()
        self.http = HttpServer(routes, render_error, config.http_limits())
        self.grpc: GrpcListener | None = None
        if config.grpc_port:
            servicer = BalancerServicer(self.service, self.admin, config.keys)
            self.grpc = GrpcListener(servicer.handlers(), config.grpc_max_message)
        self._tasks: set[asyncio.Task[None]] = set()
        self.loop_lag = LoopLag(metrics.registry)
        self.heap_trim = HeapTrimmer(metrics.registry, config.heap_trim_interval)
        self.port = config.port
        self.grpc_port: int | None = None
        self.shared = SharedMetrics(metrics.registry, metrics_dir) if metrics_dir is not None else None
        metrics.shared = self.shared

    # what the metrics read when scraped

    def _ring_size(self) -> dict[tuple[str, ...], float]:
        members = self.service.members
        return {("member",): float(len(members)), ("admitted",): float(len(members.loads))}

    def _health_states(self) -> dict[tuple[str, ...], float]:
        return {(w, self.admin.state(w)): 1.0 for w in self.service.members.addresses}

    def _replica_counts(self) -> dict[tuple[str, ...], float]:
        return {(m,): float(n) for m, n in self.replicas.counts.items()}

    def _replica_trials(self) -> dict[tuple[str, ...], float]:
        return {(outcome,): float(n) for outcome, n in self.replicas.trials.items()}

    def _index_refreshed(self, index: ModelIndex) -> None:
        self.service.members.set_model_sizes({name: info.size for name, info in index.models.items()})
        self.residency.replace(index.resident_on())
        self.replicas.set_limits({name: info.replicas for name, info in index.models.items()})

    # lifecycle

    def _spawn(self, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.get_running_loop().create_task(loop())
        self._tasks.add(task)

    async def start(self) -> None:
        freeze_start_up_objects()  # before it listens
        await self.service.rules.start()
        shared = self.config.processes > 1
        if shared:
            await self._learn_before_listening()
        try:
            config = self.config
            self.port = await self.http.start(config.host, config.port, reuse_port=shared, tls=config.tls_context())
            if self.grpc is not None:
                self.grpc_port = await self.grpc.start(config.host, config.grpc_port, shared, config.tls_pair())
                await self.grpc.set_serving()
        except OSError:
            await self.http.shutdown(0)
            await self.service.rules.close()
            await self.transport.close()
            await self.service.cache.close()
            await self.discovery.close()
            raise
        self._spawn(self._membership)
        self._spawn(self._index)
        self._spawn(self._upkeep)
        if self.config.health_interval > 0:
            self._spawn(self.prober.run)
        self._spawn(self.loop_lag.run)
        self._spawn(self.heap_trim.run)
        if self.shared is not None:
            self._spawn(self.shared.run)
        scheme = "https" if self.config.tls_cert is not None else "http"
        grpc_note = f" and grpc {self.config.host}:{self.grpc_port}" if self.grpc_port else ""
        log.info(
            "balancer on %s://%s:%d%s, workers from %s discovery (policy %s, cache %s)",
            scheme, self.config.host, self.port, grpc_note,
            self.source.name, self.config.policy, "redis" if self.config.redis_url else "in-process",
        )  # fmt: skip

    async def _learn_before_listening(self) -> None:
        """One of several processes on a shared port learns the workers and the index
        before it listens: the kernel hands a listener new connections at once, and
        a sibling that is ready serves them meanwhile (a rolling restart). Bounded:
        with no worker up, it listens anyway and answers 503 until one is."""
        try:
            async with asyncio.timeout(STARTUP_LEARN_SECONDS):  # a hung worker cannot hold it longer
                while not self.service.ready:
                    try:
                        await self.refresh()
                    except Exception:
                        log.exception("membership refresh failed")
                    if not self.service.ready:
                        await asyncio.sleep(0.2)
        except TimeoutError:
            log.warning("no worker answered in %.0f s: listening anyway (503 until one does)", STARTUP_LEARN_SECONDS)

    async def refresh(self) -> None:
        """Learn the workers (ids, addresses, capacities), apply the changes, refresh the index."""
        await self.refresh_members()
        await self.service.index.refresh()

    async def refresh_members(self) -> None:
        found = await self.discovery.members()
        self.service.members.set_members(
            {w: d.address for w, d in found.items()}, {w: d.capacity for w, d in found.items()}
        )

    async def _membership(self) -> None:
        """Now, then every ``discovery_interval`` seconds (twice a second until ready)."""
        while True:
            try:
                await self.refresh_members()
                if not self.service.index.loaded and len(self.service.members):
                    await self.service.index.refresh()
            except Exception:  # a bug, not an outage (outages are handled inside): say so, keep going
                log.exception("membership refresh failed")
            ready = self.service.ready
            await asyncio.sleep(
                min(self.config.discovery_interval, 0.5) if not ready else self.config.discovery_interval
            )

    async def _index(self) -> None:
        while True:
            await asyncio.sleep(self.config.index_refresh)
            try:
                await self.service.index.refresh()
            except Exception:
                log.exception("index refresh failed")

    async def _upkeep(self) -> None:
        while True:
            await asyncio.sleep(UPKEEP_INTERVAL)
            try:
                self.service.members.health.tick()
                self.replicas.tick()
            except Exception:  # one bad tick must not end ejection expiry and replica scaling for good
                log.exception("upkeep failed")

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
        await self.discovery.close()
        await self.transport.close()
        if self.grpc_upstream is not None:
            await self.grpc_upstream.close()
        if self.shared is not None:
            self.shared.remove()


async def serve(config: BalancerConfig, metrics_dir: Path | None = None) -> int:
    return await serve_until_signalled(Balancer(config, metrics_dir=metrics_dir), config.drain_delay)


def serve_processes(config: BalancerConfig) -> int:
    """``--processes N``: N balancers on the same ports (each a whole balancer), their
    metrics added up; the supervisor forwards signals and replaces one that exits."""
    from common.lifecycle import run

    return Supervisor(config.processes, lambda index, metrics_dir: run(serve(config, metrics_dir))).run()
