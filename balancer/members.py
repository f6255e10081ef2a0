"""Worker membership: who the workers are, where they listen, what each is doing.

One object owns the ring and the in-flight counts, keyed by each worker's
stable id (never its URL). Membership changes arrive as a whole mapping
``{id: base URL}`` and are applied as diffs (only models owned by a worker
that left or joined move). Callers pair ``begin`` and ``end`` in
``try/finally``, so a cancelled request still releases its slot.
"""

from __future__ import annotations

from collections.abc import Mapping

from balancer.ring import HashRing


class Members:
    def __init__(self, workers: Mapping[str, str] | None = None) -> None:
        self.ring = HashRing()
        self.urls: dict[str, str] = {}
        self.inflight: dict[str, int] = {}
        self.set_members(workers or {})

    def set_members(self, workers: Mapping[str, str]) -> None:
        for worker_id in list(self.urls):
            if worker_id not in workers:
                self.ring.remove(worker_id)
                del self.urls[worker_id]
                self.inflight.pop(worker_id, None)
        for worker_id, base in workers.items():
            if worker_id not in self.urls:
                self.inflight.setdefault(worker_id, 0)
                self.ring.add(worker_id)
            self.urls[worker_id] = base

    def __len__(self) -> int:
        return len(self.urls)

    def preference_list(self, model: str) -> tuple[str, ...]:
        return self.ring.preference_list(model)

    def begin(self, worker_id: str) -> None:
        self.inflight[worker_id] = self.inflight.get(worker_id, 0) + 1

    def end(self, worker_id: str) -> None:
        if worker_id in self.inflight:  # the worker may have left meanwhile
            self.inflight[worker_id] -= 1
