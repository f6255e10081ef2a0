"""Discovery: which workers exist, by id, where they listen, and their capacity.

Two steps. A *source* lists worker addresses: ``StaticSource`` (``--workers``),
``balancer.dns.DnsSource`` (``--workers-dns``), ``balancer.redis_members.RedisSource``
(``--workers-redis``). Then ``Discovery`` asks each address who it is (``GET
/v2`` answers with its ``worker_id``, its ``capacity`` in bytes and its
``grpc_port`` when it serves gRPC), so the ring is built from the ids the
workers report (docs/design.md, "Identity": two balancers given the same
members build the same ring, whatever address they use).

- A worker joins once it has answered.
- A listed address that stops answering keeps its last known id: health, not
  discovery, decides whether it gets traffic.
- An address no longer listed leaves.
- A source that cannot be reached, or that lists nobody, keeps the last known
  addresses (docs/design.md, "Membership": never empty the ring because the
  registry is down).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

import orjson

from balancer.errors import UpstreamError
from balancer.members import WorkerAddress
from balancer.transport import Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Discovered:
    address: WorkerAddress
    capacity: int = 0  # bytes; 0 when the worker does not say


class AddressSource(Protocol):
    name: str

    async def addresses(self) -> tuple[str, ...] | None:
        """Worker base URLs (``http://host:port``); None when the source cannot be reached."""
        ...

    async def close(self) -> None: ...


class StaticSource:
    name = "static"

    def __init__(self, urls: tuple[str, ...]) -> None:
        self.urls = urls

    async def addresses(self) -> tuple[str, ...] | None:
        return self.urls

    async def close(self) -> None:
        return None


class Discovery:
    def __init__(self, source: AddressSource, transport: Transport) -> None:
        self.source = source
        self._transport = transport
        self.urls: tuple[str, ...] = ()
        self._known: dict[str, tuple[str, Discovered]] = {}  # base URL -> (worker id, what it said)

    async def _ask(self, url: str) -> tuple[str, Discovered] | None:
        try:
            resp = await self._transport.send(url, "GET", "/v2")
            if resp.status != 200:
                return None
            meta = orjson.loads(resp.body)
            worker_id, grpc_port, capacity = meta.get("worker_id"), meta.get("grpc_port"), meta.get("capacity")
        except (UpstreamError, orjson.JSONDecodeError, AttributeError):
            return None
        if not isinstance(worker_id, str) or not worker_id:
            return None
        grpc = None
        if isinstance(grpc_port, int) and 0 < grpc_port < 65536:
            grpc = f"{url.removeprefix('http://').rpartition(':')[0]}:{grpc_port}"
        size = capacity if isinstance(capacity, int) and capacity > 0 else 0
        return worker_id, Discovered(WorkerAddress(url, grpc), size)

    async def members(self) -> dict[str, Discovered]:
        """``{worker id: what it said}`` for every listed worker that has told its id."""
        try:
            listed = await self.source.addresses()
        except Exception:  # a source's bug or an outage it did not foresee: keep the last known
            log.exception("%s discovery failed; keeping the last known workers", self.source.name)
            listed = None
        if listed:
            if set(listed) != set(self.urls):
                log.info("%s discovery: %d workers listed", self.source.name, len(listed))
            self.urls = tuple(dict.fromkeys(listed))
        elif self.urls:
            log.warning("%s discovery listed no worker; keeping the last known %d", self.source.name, len(self.urls))
        urls = self.urls
        for url in [u for u in self._known if u not in urls]:
            del self._known[url]
        answers = await asyncio.gather(*(self._ask(u) for u in urls))
        for url, answer in zip(urls, answers, strict=True):
            if answer is not None:
                self._known[url] = answer
        found: dict[str, Discovered] = {}
        for url in urls:
            known = self._known.get(url)
            if known is None:
                continue
            worker_id, discovered = known
            if worker_id in found:
                log.warning(
                    "workers at %s and %s both call themselves %r", found[worker_id].address.http, url, worker_id
                )
                continue
            found[worker_id] = discovered
        return found

    async def close(self) -> None:
        await self.source.close()
