"""The balancer's admin operations: drain a worker, show the cluster, load or
unload a model on its owners. Transport-free like the request path; the REST
front checks the admin token before calling any of these.

    POST /admin/workers/{id}/drain      no new requests to it; wait for those in flight
    POST /admin/workers/{id}/undrain    take requests again
    GET  /admin/cluster                 ring, workers (health, load, residents), models
    POST /v2/repository/models/{name}/load|unload   on the model's owners, then refresh the index
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from balancer.errors import UpstreamError
from balancer.index import ModelIndex
from balancer.members import Members
from balancer.replicas import ReplicaScaler
from balancer.residency import Residency
from balancer.transport import Transport, UpstreamResponse
from common.auth import admin_headers
from protocol.errors import NotFound, UpstreamUnavailable, error_for_status
from protocol.names import check_name

JSON = "application/json"


class AdminService:
    def __init__(
        self,
        members: Members,
        index: ModelIndex,
        transport: Transport,
        replicas: ReplicaScaler,
        residency: Residency,
        policy: str,
        admin_token: str | None,
        drain_timeout: float = 30.0,
    ) -> None:
        self.members = members
        self.index = index
        self.transport = transport
        self.replicas = replicas
        self.residency = residency
        self.policy = policy
        self.admin_token = admin_token
        self.drain_timeout = drain_timeout

    def _member(self, worker_id: str) -> str:
        if worker_id not in self.members:
            raise NotFound(f"no worker '{worker_id}' is a member")
        return worker_id

    async def drain(self, worker_id: str, within: float | None = None) -> dict[str, Any]:
        """Stop sending new requests to the worker and wait (bounded) for those in flight."""
        worker = self._member(worker_id)
        self.members.drain(worker)
        drained = await self.members.wait_idle(worker, self.drain_timeout if within is None else within)
        return {"worker": worker, "drained": drained, "inflight": self.members.inflight.get(worker, 0)}

    def undrain(self, worker_id: str) -> dict[str, Any]:
        worker = self._member(worker_id)
        self.members.undrain(worker)
        return {"worker": worker, "state": self.state(worker)}

    def state(self, worker: str) -> str:
        if worker in self.members.drained:
            return "draining"
        return self.members.health.state(worker)

    def cluster(self) -> dict[str, Any]:
        m = self.members
        health = m.health.workers
        workers = []
        for worker in sorted(m.addresses):
            address = m.addresses[worker]
            h = health.get(worker)
            workers.append(
                {
                    "id": worker,
                    "http": address.http,
                    "grpc": address.grpc,
                    "capacity": m.capacities.get(worker, 0),
                    "vnodes": m.ring.vnodes(worker),
                    "state": self.state(worker),
                    "admitted": m.admitted(worker),
                    "inflight": m.inflight.get(worker, 0),
                    "ejections": h.ejections if h is not None else 0,
                    "resident": self.residency.models_on(worker),
                }
            )
        models = {}
        for name in sorted(self.index.models) if m.addresses else ():
            models[name] = {
                "preference_list": list(m.preference_list(name)),
                "candidates": list(m.candidates(name)),
                "home": m.home(name),
                "size": m.sizes.get(name, 0),
                "replicas": self.replicas.replicas(name),
                "resident_on": sorted(self.residency.on(name)),
            }
        return {
            "policy": self.policy,
            "ring": {"size": len(m), "admitted": len(m.loads), "workers": sorted(m.addresses)},
            "panic": m.panic,
            "workers": workers,
            "models": models,
        }

    async def _owners(self, name: str) -> str:
        check_name(name)
        return (await self.index.require(name)).name

    async def repository(self, name: str, action: str, body: bytes) -> dict[str, Any]:
        """``load`` or ``unload`` the model on its owners (its home workers; an unload
        also where it is resident), then refresh the index."""
        model = await self._owners(name)
        home = list(self.members.candidates(model)[: self.replicas.replicas(model)])
        targets = home if action == "load" else sorted(set(home) | (self.residency.on(model) & set(self.members.loads)))
        if not targets:
            raise UpstreamUnavailable("no healthy worker owns this model")
        path = f"/v2/repository/models/{model}/{action}"
        headers = admin_headers(self.admin_token)
        answers = await asyncio.gather(*(self._send(w, path, body, headers) for w in targets), return_exceptions=False)
        await self.index.refresh()
        results = {w: resp.status if resp is not None else 502 for w, resp in zip(targets, answers, strict=True)}
        failed = [(w, r) for w, r in zip(targets, answers, strict=True) if r is None or r.status != 200]
        if failed:
            worker, resp = failed[0]
            if resp is None:
                raise UpstreamUnavailable(f"worker {worker} did not answer the {action}")
            raise error_for_status(resp.status, _message(resp) or f"worker {worker} answered {resp.status}")
        return {"name": model, "action": action, "workers": results}

    async def _send(self, worker: str, path: str, body: bytes, headers: dict[str, str]) -> UpstreamResponse | None:
        address = self.members.addresses.get(worker)
        if address is None:
            return None
        try:
            return await self.transport.send(address.http, "POST", path, body or b"{}", JSON, headers)
        except UpstreamError:
            return None


def _message(resp: UpstreamResponse) -> str:
    try:
        obj = orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        return ""
    return str(obj.get("error", "")) if isinstance(obj, dict) else ""
