"""When each request is due: send offsets, in seconds from the start of a run.

An open-loop generator decides every send time in advance, whatever the target
does; latency is then measured from these scheduled times, so a stalled target
shows up as the queueing delay of everything scheduled behind the stall
(no coordinated omission: Gil Tene's "How NOT to measure latency", wrk2).

``poisson``: exponential inter-arrival times at ``rate`` (memoryless arrivals,
the usual model of many independent clients). ``constant``: exactly ``1/rate``
apart. Both are pure and seeded.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

KINDS = ("poisson", "constant")


def poisson_offsets(rate: float, rng: random.Random) -> Iterator[float]:
    """Offsets of a Poisson process at ``rate`` per second: the first arrival
    comes after one exponential gap, as every later one does."""
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        yield t


def constant_offsets(rate: float, phase: float = 0.0) -> Iterator[float]:
    """Evenly spaced offsets, ``phase`` seconds in (several generator
    processes interleave their constant streams by phase)."""
    period = 1.0 / rate
    for i in itertools.count():
        yield phase + i * period


def offsets(kind: str, rate: float, seed: int, phase: float = 0.0) -> Iterator[float]:
    if rate <= 0:
        raise ValueError(f"arrival rate must be positive, not {rate}")
    if kind == "poisson":
        return poisson_offsets(rate, random.Random(seed))
    if kind == "constant":
        return constant_offsets(rate, phase)
    raise ValueError(f"unknown arrival process {kind!r} (choose from {', '.join(KINDS)})")
