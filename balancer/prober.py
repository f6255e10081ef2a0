"""Active health checks: ``GET /v2/health/ready`` on every member, every ``interval``.

A 200 within ``timeout`` passes; anything else (a 503 while the worker is
loading or draining, a refused connection, a stopped process that never
answers) fails. Results go to ``balancer.health.HealthBook``, which applies the
rise and fall thresholds. Probes of all workers run concurrently, so one
stopped worker cannot delay the others' checks.
"""

from __future__ import annotations

import asyncio

from balancer.errors import UpstreamError
from balancer.members import Members
from balancer.transport import Transport

READY_PATH = "/v2/health/ready"


class Prober:
    def __init__(self, members: Members, transport: Transport, interval: float, timeout: float) -> None:
        self.members = members
        self.transport = transport
        self.interval = interval
        self.timeout = timeout

    async def _probe(self, worker: str, base_url: str) -> None:
        try:
            resp = await self.transport.send(base_url, "GET", READY_PATH, try_timeout=self.timeout)
            ok = resp.status == 200
        except UpstreamError:
            ok = False
        self.members.health.probe(worker, ok)

    async def probe_all(self) -> None:
        addresses = list(self.members.addresses.items())
        await asyncio.gather(*(self._probe(w, a.http) for w, a in addresses))

    async def run(self) -> None:
        while True:
            await self.probe_all()
            await asyncio.sleep(self.interval)
