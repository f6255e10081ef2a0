"""Discovery: which workers exist, by id, and where they listen.

``StaticDiscovery`` takes the addresses given with ``--workers`` and asks each
worker who it is (``GET /v2`` answers with its ``worker_id``), so the ring is
built from the ids the workers report (docs/design.md, "Identity": two
balancers given the same members build the same ring, whatever address they
use). A worker joins once it has answered; one that stops answering keeps its
last known id (health, not discovery, decides whether it gets traffic).
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from balancer.errors import UpstreamError
from balancer.transport import Transport

log = logging.getLogger(__name__)


class StaticDiscovery:
    def __init__(self, urls: tuple[str, ...], transport: Transport) -> None:
        self.urls = urls
        self._transport = transport
        self._ids: dict[str, str] = {}  # base URL -> worker id

    async def _ask(self, url: str) -> str | None:
        try:
            resp = await self._transport.send(url, "GET", "/v2")
            if resp.status != 200:
                return None
            worker_id = orjson.loads(resp.body).get("worker_id")
        except (UpstreamError, orjson.JSONDecodeError, AttributeError):
            return None
        return worker_id if isinstance(worker_id, str) and worker_id else None

    async def members(self) -> dict[str, str]:
        """``{worker id: base URL}`` for every worker that has told its id."""
        answers = await asyncio.gather(*(self._ask(u) for u in self.urls))
        for url, worker_id in zip(self.urls, answers, strict=True):
            if worker_id is not None:
                self._ids[url] = worker_id
        found: dict[str, str] = {}
        for url in self.urls:
            worker_id = self._ids.get(url)
            if worker_id is None:
                continue
            if worker_id in found:
                log.warning(
                    "workers at %s and %s both call themselves %r; using the first", found[worker_id], url, worker_id
                )
                continue
            found[worker_id] = url
        return found
