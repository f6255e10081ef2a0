"""Worker membership: who the workers are, where they listen, what each is doing.

One object owns the ring and the in-flight counts, keyed by each worker's
stable id (never its URL). Membership changes arrive as a whole mapping
``{id: WorkerAddress}`` and are applied as diffs (only models owned by a worker
that left or joined move). Callers pair ``begin`` and ``end`` in
``try/finally``, so a cancelled request still releases its slot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from balancer.ring import HashRing


@dataclass(frozen=True, slots=True)
class WorkerAddress:
    """Where a worker listens: its REST base URL and, when it serves one, its gRPC target."""

    http: str  # http://host:port
    grpc: str | None = None  # host:port


class Members:
    def __init__(self, workers: Mapping[str, WorkerAddress] | None = None) -> None:
        self.ring = HashRing()
        self.addresses: dict[str, WorkerAddress] = {}
        self.inflight: dict[str, int] = {}
        self.set_members(workers or {})

    def set_members(self, workers: Mapping[str, WorkerAddress]) -> None:
        for worker_id in list(self.addresses):
            if worker_id not in workers:
                self.ring.remove(worker_id)
                del self.addresses[worker_id]
                self.inflight.pop(worker_id, None)
        for worker_id, address in workers.items():
            if worker_id not in self.addresses:
                self.inflight.setdefault(worker_id, 0)
                self.ring.add(worker_id)
            self.addresses[worker_id] = address

    def __len__(self) -> int:
        return len(self.addresses)

    def __contains__(self, worker_id: str) -> bool:
        return worker_id in self.addresses

    def preference_list(self, model: str) -> tuple[str, ...]:
        return self.ring.preference_list(model)

    def begin(self, worker_id: str) -> None:
        self.inflight[worker_id] = self.inflight.get(worker_id, 0) + 1

    def end(self, worker_id: str) -> None:
        if worker_id in self.inflight:  # the worker may have left meanwhile
            self.inflight[worker_id] -= 1
