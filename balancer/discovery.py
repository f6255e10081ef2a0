"""Discovery: which workers exist, by id, and where they listen.

``StaticDiscovery`` takes the addresses given with ``--workers`` and asks each
worker who it is (``GET /v2`` answers with its ``worker_id``, and its
``grpc_port`` when it serves gRPC), so the ring is built from the ids the
workers report (docs/design.md, "Identity": two balancers given the same members
build the same ring, whatever address they use). A worker joins once it has
answered; one that stops answering keeps its last known id (health, not
discovery, decides whether it gets traffic).
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from balancer.errors import UpstreamError
from balancer.members import WorkerAddress
from balancer.transport import Transport

log = logging.getLogger(__name__)


class StaticDiscovery:
    def __init__(self, urls: tuple[str, ...], transport: Transport) -> None:
        self.urls = urls
        self._transport = transport
        self._known: dict[str, tuple[str, WorkerAddress]] = {}  # base URL -> (worker id, address)

    async def _ask(self, url: str) -> tuple[str, WorkerAddress] | None:
        try:
            resp = await self._transport.send(url, "GET", "/v2")
            if resp.status != 200:
                return None
            meta = orjson.loads(resp.body)
            worker_id, grpc_port = meta.get("worker_id"), meta.get("grpc_port")
        except (UpstreamError, orjson.JSONDecodeError, AttributeError):
            return None
        if not isinstance(worker_id, str) or not worker_id:
            return None
        grpc = None
        if isinstance(grpc_port, int) and 0 < grpc_port < 65536:
            grpc = f"{url.removeprefix('http://').rpartition(':')[0]}:{grpc_port}"
        return worker_id, WorkerAddress(url, grpc)

    async def members(self) -> dict[str, WorkerAddress]:
        """``{worker id: address}`` for every worker that has told its id."""
        answers = await asyncio.gather(*(self._ask(u) for u in self.urls))
        for url, answer in zip(self.urls, answers, strict=True):
            if answer is not None:
                self._known[url] = answer
        found: dict[str, WorkerAddress] = {}
        for url in self.urls:
            known = self._known.get(url)
            if known is None:
                continue
            worker_id, address = known
            if worker_id in found:
                log.warning("workers at %s and %s both call themselves %r", found[worker_id].http, url, worker_id)
                continue
            found[worker_id] = address
        return found
