"""Worker membership: who the workers are, where they listen, which may take requests.

One object owns the ring, the in-flight counts and admission, keyed by each
worker's stable id (never its URL). Membership changes arrive as a whole
mapping ``{id: WorkerAddress}`` (with capacities) and are applied as diffs:
only models owned by a worker that left or joined move.

A member is *admitted* (a routing candidate) when its health says so
(``balancer.health``) and no operator is draining it. Whatever changes
admission recomputes, once, what the hot path reads: ``loads`` (in-flight
counts of admitted workers), ``shares`` (each one's share of the admitted
capacity) and the per-model candidate lists (the ring's preference list less
workers not admitted, the model's placed home first), so a request costs
dictionary lookups.

Placement (``balancer.placement``): with the models' sizes from the index
(``set_model_sizes``), each model's home is the first worker in its ring order
with room for it (its fair share of the models' bytes and its memory), so no
worker is given more models than its share or its budget holds while another
has room. Homes are placed over the members that are not drained, whatever this
balancer's view of their health (probes and ejections are each balancer's
own; membership and drains are what balancers share), and recomputed only
when those members, their capacities or the sizes change: a worker ejected
for a moment moves its own models to the next admitted worker in ring order,
as without placement, and nobody else's.

Panic threshold: when fewer than ``panic_threshold`` of the members (not
counting drained ones) are admitted, ``panic`` is set and the router fails
fast for models whose owner is out rather than pile every model onto the
survivors (Envoy's panic threshold, taken the other way on purpose: piling
the whole catalogue onto a few workers evicts everything they hold).

Callers pair ``begin`` and ``end`` in ``try/finally``, so a cancelled request
still releases its slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from balancer.health import HealthBook
from balancer.placement import capacity_weights, place
from balancer.ring import HashRing


@dataclass(frozen=True, slots=True)
class WorkerAddress:
    """Where a worker listens: its REST base URL and, when it serves one, its gRPC target."""

    http: str  # http://host:port
    grpc: str | None = None  # host:port


class Members:
    def __init__(
        self,
        workers: Mapping[str, WorkerAddress] | None = None,
        health: HealthBook | None = None,
        panic_threshold: float = 0.5,
    ) -> None:
        self.ring = HashRing()
        self.health = health or HealthBook()
        self.health.on_change = self.readmit
        self.panic_threshold = panic_threshold
        self.addresses: dict[str, WorkerAddress] = {}
        self.capacities: dict[str, int] = {}  # bytes, as each worker reports (0: unknown)
        self.inflight: dict[str, int] = {}  # every member
        self.loads: dict[str, int] = {}  # admitted members only: what policies see
        self.shares: dict[str, float] = {}  # admitted members' share of the admitted capacity
        self.drained: set[str] = set()
        self.panic = False
        self.sizes: dict[str, int] = {}  # bytes of each model's weights, from the index
        self.homes: dict[str, str] = {}  # each model's placed home among the members not drained
        self._placed_over: dict[str, int] | None = None  # the members (and capacities) homes were placed over
        self._candidates: dict[str, tuple[str, ...]] = {}
        self._idle: dict[str, asyncio.Event] = {}  # drained workers someone waits on
        self.set_members(workers or {})

    def set_members(self, workers: Mapping[str, WorkerAddress], capacities: Mapping[str, int] | None = None) -> None:
        for worker_id in [w for w in self.addresses if w not in workers]:
            del self.addresses[worker_id]
            self.inflight.pop(worker_id, None)
            self.capacities.pop(worker_id, None)
            self.drained.discard(worker_id)
            self._idle.pop(worker_id, None)
        for worker_id, address in workers.items():
            self.inflight.setdefault(worker_id, 0)
            self.addresses[worker_id] = address
            if capacities is not None and worker_id in capacities:
                self.capacities[worker_id] = capacities[worker_id]
        self.ring.set_nodes({w: float(self.capacities.get(w, 0)) for w in self.addresses})
        self.health.sync(self.addresses)
        self._place()
        self.readmit()

    def readmit(self) -> None:
        """Recompute admission and what the hot path reads from it."""
        admitted = [w for w in self.addresses if w not in self.drained and self.health.admitted(w)]
        self.loads.clear()
        self.loads.update((w, self.inflight.get(w, 0)) for w in admitted)
        weights = capacity_weights({w: self.capacities.get(w, 0) for w in admitted})
        total = sum(weights.values()) or 1.0
        self.shares.clear()
        self.shares.update((w, c / total) for w, c in weights.items())
        self._candidates.clear()
        eligible = len(self.addresses) - len(self.drained)
        self.panic = eligible > 0 and len(admitted) < self.panic_threshold * eligible

    def set_model_sizes(self, sizes: Mapping[str, int]) -> None:
        """The models and their sizes (from the index); placement follows them."""
        if dict(sizes) != self.sizes:
            self.sizes = dict(sizes)
            self._place(force=True)

    def _place(self, force: bool = False) -> None:
        """Each model's home over the members not drained (see the module docstring);
        nothing to do unless they, their capacities or (``force``) the sizes changed:
        discovery applies the same members every few seconds, and placing 10,000
        models over 10 workers takes ~45 ms of the event loop."""
        ring, drained = self.ring, self.drained
        over = {w: self.capacities.get(w, 0) for w in self.addresses if w not in drained}
        if not force and over == self._placed_over:
            return
        self._placed_over = over
        if not self.sizes or not over:
            self.homes = {}
        else:
            self.homes = place(
                self.sizes, lambda model: [w for w in ring.preference_list(model) if w not in drained], over
            )
        self._candidates.clear()

    def __len__(self) -> int:
        return len(self.addresses)

    def __contains__(self, worker_id: str) -> bool:
        return worker_id in self.addresses

    def admitted(self, worker_id: str) -> bool:
        return worker_id in self.loads

    def preference_list(self, model: str) -> tuple[str, ...]:
        """Every member in ring order from the model's hash, admitted or not."""
        return self.ring.preference_list(model)

    def candidates(self, model: str) -> tuple[str, ...]:
        """Admitted members in ring order from the model's hash, its placed home
        first (may be empty)."""
        found = self._candidates.get(model)
        if found is None:
            loads = self.loads
            found = tuple(w for w in self.ring.preference_list(model) if w in loads) if loads else ()
            home = self.homes.get(model)
            if home is not None and home in loads and found[0] != home:
                found = (home, *(w for w in found if w != home))
            self._candidates[model] = found
        return found

    def home(self, model: str) -> str:
        """The model's home among the members: its placed home, else its ring owner."""
        return self.homes.get(model) or self.ring.preference_list(model)[0]

    def owner_out(self, model: str) -> bool:
        """Whether the model's home (placed, else its owner on the whole ring) is not admitted."""
        return self.home(model) not in self.loads

    def begin(self, worker_id: str) -> None:
        self.inflight[worker_id] = self.inflight.get(worker_id, 0) + 1
        loads = self.loads
        if worker_id in loads:
            loads[worker_id] += 1

    def end(self, worker_id: str) -> None:
        count = self.inflight.get(worker_id)
        if count is None:  # the worker left meanwhile
            return
        self.inflight[worker_id] = count - 1
        loads = self.loads
        if worker_id in loads:
            loads[worker_id] -= 1
        if count == 1 and self._idle:
            event = self._idle.get(worker_id)
            if event is not None:
                event.set()

    # operator drain

    def drain(self, worker_id: str) -> None:
        """No new requests to this worker (those in flight finish)."""
        self.drained.add(worker_id)
        self._place()
        self.readmit()

    def undrain(self, worker_id: str) -> None:
        self.drained.discard(worker_id)
        self._idle.pop(worker_id, None)
        self._place()
        self.readmit()

    async def wait_idle(self, worker_id: str, within: float) -> bool:
        """Wait (bounded) until the worker has nothing in flight; whether it got there."""
        if not self.inflight.get(worker_id):
            return True
        event = self._idle.setdefault(worker_id, asyncio.Event())
        try:
            async with asyncio.timeout(within):
                while self.inflight.get(worker_id):
                    event.clear()
                    await event.wait()
            return True
        except TimeoutError:
            return False
