"""Worker health: active probes and passive ejection, as one state machine per worker.

Pure logic: no I/O, an injectable clock and random source. The prober
(``balancer.prober``) feeds it probe results; the router feeds it what each
try did. A worker is *admitted* (a routing candidate) unless one of these
holds:

- down: its last ``fall`` probes of ``/v2/health/ready`` failed; it comes back
  after ``rise`` passes in a row (HAProxy's ``check inter rise fall``);
- ejected: ``eject_after`` tries in a row failed in a way that counts against
  a worker (connect error, reset before any answer, per-try timeout, 502, 504,
  503 without ``Retry-After``; never a model's own 500/507/4xx and never an
  overload 503 with ``Retry-After``: the router decides what counts). The
  n-th ejection in a row lasts ``ejection_time x 2^(n-1)``, at most
  ``max_ejection_time``, plus up to ``jitter`` of it at random so ejected
  workers do not all come back at once (Envoy's outlier detection, with
  exponential back-off). A probe that passes does not end an ejection early:
  a worker that answers its health check but fails requests must wait out
  its back-off. The back-off count starts again once a worker has stayed
  admitted for ``max_ejection_time``.

Never more than ``max(1, max_ejected_share x workers)`` are ejected at once on
these passive grounds: a failure that hits everyone (a bad request pattern,
the balancer's own network) must not empty the ring. Probes are not limited:
a worker that fails its health check is down.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class HealthSettings:
    eject_after: int = 5
    ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejected_share: float = 0.25
    jitter: float = 0.1
    rise: int = 2
    fall: int = 3

    def __post_init__(self) -> None:
        if self.eject_after < 1 or self.rise < 1 or self.fall < 1:
            raise ValueError("ejection and probe thresholds must be at least 1")
        if not 0 < self.ejection_time <= self.max_ejection_time:
            raise ValueError("the ejection time must be positive and at most the maximum ejection time")
        if not 0 <= self.max_ejected_share <= 1 or not 0 <= self.jitter <= 1:
            raise ValueError("the ejected share and the jitter are fractions between 0 and 1")


class WorkerHealth:
    __slots__ = ("admitted_since", "down", "ejected_until", "ejections", "failures", "passes", "probe_fails")

    def __init__(self, now: float) -> None:
        self.failures = 0  # passive, in a row
        self.ejections = 0  # in a row, for the back-off
        self.ejected_until: float | None = None
        self.admitted_since = now
        self.down = False  # by active probes
        self.passes = 0
        self.probe_fails = 0

    @property
    def state(self) -> str:
        if self.ejected_until is not None:
            return "ejected"
        return "down" if self.down else "healthy"


class HealthBook:
    def __init__(
        self,
        settings: HealthSettings | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        on_change: Callable[[], None] = lambda: None,
        on_eject: Callable[[str, str], None] = lambda worker, reason: None,
    ) -> None:
        self.settings = settings or HealthSettings()
        self._clock = clock
        self._rng = rng or random.Random()
        self.on_change = on_change  # admission changed
        self.on_eject = on_eject  # (worker, "outlier" | "probe")
        self.workers: dict[str, WorkerHealth] = {}

    def sync(self, workers: Iterable[str]) -> None:
        """Track exactly these workers; a new one starts healthy (it answered discovery)."""
        wanted = set(workers)
        for worker in [w for w in self.workers if w not in wanted]:
            del self.workers[worker]
        now = self._clock()
        for worker in sorted(wanted):
            if worker not in self.workers:
                self.workers[worker] = WorkerHealth(now)

    def admitted(self, worker: str) -> bool:
        h = self.workers.get(worker)
        return h is not None and h.ejected_until is None and not h.down

    def state(self, worker: str) -> str:
        h = self.workers.get(worker)
        return h.state if h is not None else "unknown"

    def ejected_count(self) -> int:
        return sum(1 for h in self.workers.values() if h.ejected_until is not None)

    def max_ejected(self) -> int:
        return max(1, math.floor(self.settings.max_ejected_share * len(self.workers)))

    # passive: what each try did

    def success(self, worker: str) -> None:
        h = self.workers.get(worker)
        if h is not None and h.failures:
            h.failures = 0

    def failure(self, worker: str) -> bool:
        """A try that counts against ``worker`` failed; True when it got ejected."""
        h = self.workers.get(worker)
        if h is None or h.ejected_until is not None:
            return False
        h.failures += 1
        if h.failures < self.settings.eject_after or self.ejected_count() >= self.max_ejected():
            return False
        s, now = self.settings, self._clock()
        if now - h.admitted_since >= s.max_ejection_time:
            h.ejections = 0  # it stayed healthy long enough: the back-off starts again
        h.ejections += 1
        duration = min(s.ejection_time * 2 ** (h.ejections - 1), s.max_ejection_time)
        duration *= 1 + s.jitter * self._rng.random()
        h.ejected_until = now + duration
        log.warning(
            "worker %s ejected for %.1fs after %d failed tries in a row (ejection %d in a row)",
            worker, duration, h.failures, h.ejections,
        )  # fmt: skip
        self.on_eject(worker, "outlier")
        self.on_change()
        return True

    # active: what each probe said

    def probe(self, worker: str, ok: bool) -> None:
        h = self.workers.get(worker)
        if h is None:
            return
        s = self.settings
        if ok:
            h.passes, h.probe_fails = h.passes + 1, 0
            if h.down and h.passes >= s.rise:
                h.down = False
                h.failures = 0
                h.admitted_since = self._clock()
                log.info("worker %s is up again (%d probes passed)", worker, h.passes)
                self.on_change()
        else:
            h.passes, h.probe_fails = 0, h.probe_fails + 1
            if not h.down and h.probe_fails >= s.fall:
                h.down = True
                log.warning("worker %s is down (%d probes failed)", worker, h.probe_fails)
                self.on_eject(worker, "probe")
                self.on_change()

    def tick(self) -> None:
        """Re-admit workers whose ejection has run out."""
        now = self._clock()
        changed = False
        for worker, h in self.workers.items():
            if h.ejected_until is not None and h.ejected_until <= now:
                h.ejected_until = None
                h.failures = 0
                h.admitted_since = now
                changed = True
                log.info("worker %s re-admitted after its ejection", worker)
        if changed:
            self.on_change()
