"""The balancer's cached copy of the workers' combined repository index.

It answers, without a network call, which models exist, their versions and
latest version, and whether their answers may be cached. A name not in it
triggers one refresh (shared by concurrent callers, at most one forced refresh
per ``min_interval``) before the balancer answers 404 itself (503 while no index
was ever loaded: not knowing is not "not found"). When every worker
fails to answer, the last known index is kept: a registry outage never empties it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from balancer.errors import UpstreamError
from balancer.members import Members
from balancer.transport import Transport
from cache.keys import KeyScope
from common.singleflight import SingleFlight
from protocol.errors import ModelNotFound, Unavailable
from protocol.types import IndexEntry

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class ModelInfo:
    name: str
    versions: frozenset[str]
    latest: str
    deterministic: bool
    cacheable: bool
    # Per version, the cache scope binding its weights' sha256; absent when the
    # workers disagree on the weights (a rollout in progress): not cached then.
    scopes: dict[str, KeyScope] = field(default_factory=dict)
    cache_ttl: float | None = None
    replicas: tuple[int, int | None] = (1, None)  # (min, max) hot-model replicas; max None: the default
    size: int = 0  # bytes of its largest version's weights, as the workers report (0: not known)
    # (version, tenant) -> that tenant's scope, made on first use (API keys): the hit path looks it up
    tenant_scopes: dict[tuple[str, str], KeyScope] = field(default_factory=dict, compare=False)

    def scope(self, version: str) -> KeyScope | None:
        """The cache scope of a version's answers, None when they must not be cached."""
        if not (self.cacheable and self.deterministic):
            return None
        return self.scopes.get(version)


class ModelIndex:
    def __init__(self, members: Members, transport: Transport, min_interval: float = 1.0) -> None:
        self._members = members
        self._transport = transport
        self.min_interval = min_interval
        self.models: dict[str, ModelInfo] = {}
        self.rows: list[dict[str, object]] = []
        self.loaded = False
        self._last_refresh = float("-inf")
        self._flight: SingleFlight[None] = SingleFlight()
        self.on_refresh: list[Callable[[ModelIndex], None]] = []  # told after each refresh that got answers

    def resident_on(self) -> dict[str, set[str]]:
        """Per model, the workers that reported any of its versions resident."""
        found: dict[str, set[str]] = {}
        for row in self.rows:
            on = row.get("resident_on")
            if isinstance(on, list):
                found.setdefault(str(row["name"]), set()).update(str(w) for w in on)
        return found

    def get(self, name: str) -> ModelInfo | None:
        return self.models.get(name)

    async def lookup(self, name: str) -> ModelInfo | None:
        """The model's info, refreshing once if it is not known yet."""
        info = self.models.get(name)
        if info is None and time.monotonic() - self._last_refresh >= self.min_interval:
            await self.refresh()
            info = self.models.get(name)
        return info

    async def require(self, name: str) -> ModelInfo:
        """The model's info; 404 when the index knows no such model, 503 (retry
        soon) while no index was ever loaded: a process that has not heard from a
        worker yet cannot say a model does not exist."""
        info = await self.lookup(name)
        if info is not None:
            return info
        if not self.loaded:
            raise Unavailable("the balancer has not loaded the repository index yet")
        raise ModelNotFound(name)

    async def refresh(self) -> None:
        await self._flight.do("refresh", self._refresh())

    async def _fetch(self, worker_id: str, base: str) -> list[tuple[str, IndexEntry]] | None:
        try:
            resp = await self._transport.send(base, "POST", "/v2/repository/index", b"{}", "application/json")
            if resp.status != 200:
                return None
            return [(worker_id, IndexEntry.from_json(row)) for row in orjson.loads(resp.body)]
        except (UpstreamError, KeyError, TypeError, AttributeError, ValueError):  # ValueError: bad JSON too
            return None

    async def _refresh(self) -> None:
        self._last_refresh = time.monotonic()
        members = list(self._members.addresses.items())
        results = await asyncio.gather(*(self._fetch(w, address.http) for w, address in members))
        answered = [r for r in results if r is not None]
        if not answered:
            if members:
                log.warning("no worker answered the repository index; keeping the last known one")
            return
        self.models, self.rows = merge([row for rows in answered for row in rows])
        self.loaded = True
        for hook in self.on_refresh:
            hook(self)


# A combined row shows the worst state any worker reports: a version whose load
# failed on its owner is unavailable through the balancer, whatever the others say.
_SEVERITY = {"READY": 0, "LOADING": 1, "UNAVAILABLE": 2}


def merge(rows: list[tuple[str, IndexEntry]]) -> tuple[dict[str, ModelInfo], list[dict[str, object]]]:
    """Combine the workers' rows: one ModelInfo per name, one row per (name, version)."""
    versions: dict[str, set[str]] = {}
    deterministic: dict[str, bool] = {}
    cacheable: dict[str, bool] = {}
    ttl: dict[str, float | None] = {}
    replicas: dict[str, tuple[int, int | None]] = {}
    weights: dict[tuple[str, str], set[str]] = {}
    sizes: dict[str, int] = {}
    combined: dict[tuple[str, str], dict[str, object]] = {}
    for worker_id, entry in rows:
        versions.setdefault(entry.name, set()).add(entry.version)
        deterministic[entry.name] = deterministic.get(entry.name, True) and entry.deterministic
        cacheable[entry.name] = cacheable.get(entry.name, True) and entry.cacheable
        if entry.cache_ttl is not None:
            ttl[entry.name] = min(entry.cache_ttl, ttl.get(entry.name) or entry.cache_ttl)
        if entry.min_replicas > 1 or entry.max_replicas is not None:
            replicas[entry.name] = (entry.min_replicas, entry.max_replicas)
        sizes[entry.name] = max(sizes.get(entry.name, 0), entry.size)
        if entry.sha256:
            weights.setdefault((entry.name, entry.version), set()).add(entry.sha256)
        row = combined.setdefault((entry.name, entry.version), {**entry.to_json(), "resident_on": []})
        if _SEVERITY.get(entry.state, 0) > _SEVERITY.get(str(row["state"]), 0):
            row["state"], row["reason"] = entry.state, entry.reason
        if entry.resident:
            row["resident"] = True
            row["resident_on"].append(worker_id)  # type: ignore[attr-defined]
    models = {
        name: ModelInfo(
            name,
            frozenset(vs),
            max(vs, key=lambda v: int(v) if v.isdigit() else -1),
            deterministic[name],
            cacheable[name],
            {v: KeyScope(name, v, next(iter(weights[name, v]))) for v in vs if len(weights.get((name, v), ())) == 1},
            ttl.get(name),
            replicas.get(name, (1, None)),
            sizes[name],
        )
        for name, vs in versions.items()
    }
    return models, [combined[k] for k in sorted(combined)]
