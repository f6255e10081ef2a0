"""One load run's settings: a frozen, self-validating dataclass.

Open loop when ``concurrency`` is 0 (requests at ``rate`` per second,
``arrivals`` poisson or constant, at most ``max_outstanding`` in flight, the
overflow dropped and counted); closed loop with ``concurrency`` clients
otherwise (each sends its next request when the last one is answered).

The seed drives arrivals, model choice, repeats and payloads. Unless given, it
is drawn fresh (and recorded in the report): two runs with one seed send the
same bodies, which a warm cache would answer.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen.arrivals import KINDS
from loadgen.clients import check_protocol
from loadgen.popularity import Popularity


@dataclass(frozen=True, slots=True)
class LoadConfig:
    url: str = "http://127.0.0.1:8000"
    rate: float = 100.0
    duration: float = 10.0
    warmup: float = 0.0
    concurrency: int = 0
    arrivals: str = "poisson"
    max_outstanding: int = 1000
    protocol: str = "rest-json"
    popularity: str = "uniform"
    models: tuple[str, ...] = ()
    repeat: float = 0.0
    payload_size: int = 0
    seed: int = field(default_factory=lambda: secrets.randbits(32))
    processes: int = 1
    timeout: float = 30.0
    out: Path | None = None
    # one generator process's share (set by ``share``): constant arrivals'
    # phase, so several processes interleave evenly
    phase: float = 0.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://", "grpc://")):
            raise ValueError(f"--url must start with http://, https:// or grpc://, not {self.url!r}")
        if self.concurrency < 0:
            raise ValueError("--concurrency cannot be negative")
        if self.concurrency == 0 and not self.rate > 0:
            raise ValueError("--rate must be positive (or give --concurrency for a closed loop)")
        if not self.duration > 0:
            raise ValueError("--duration must be positive")
        if self.warmup < 0:
            raise ValueError("--warmup cannot be negative")
        if self.arrivals not in KINDS:
            raise ValueError(f"--arrivals must be one of {', '.join(KINDS)}, not {self.arrivals!r}")
        if self.max_outstanding < 1:
            raise ValueError("--max-outstanding must be at least 1")
        check_protocol(self.protocol)
        if (self.protocol == "grpc") != self.url.startswith("grpc://"):
            raise ValueError("--protocol grpc takes a grpc://host:port --url; the REST protocols an http(s):// one")
        Popularity.parse(self.popularity)
        if not 0.0 <= self.repeat <= 1.0:
            raise ValueError("--repeat is a probability, between 0 and 1")
        if self.payload_size < 0:
            raise ValueError("--payload-size cannot be negative")
        if self.processes < 1:
            raise ValueError("--processes must be at least 1")
        if self.concurrency and self.concurrency < self.processes:
            raise ValueError("--concurrency must be at least --processes (each process runs its share)")
        if not self.timeout > 0:
            raise ValueError("--timeout must be positive")

    @property
    def closed_loop(self) -> bool:
        return self.concurrency > 0

    @property
    def connections(self) -> int:
        """Connection pool size: one per request that may be in flight."""
        return self.concurrency if self.closed_loop else self.max_outstanding

    def derived_seed(self, index: int) -> int:
        """A seed of its own for part ``index`` of this run (a process, a sweep point)."""
        return (self.seed * 1_000_003 + index) % (1 << 63)

    def share(self, index: int) -> LoadConfig:
        """Process ``index`` of ``processes``: its part of the rate, of the
        concurrency and of the outstanding cap, and a seed of its own."""
        n = self.processes
        return dataclasses.replace(
            self,
            rate=self.rate / n,
            concurrency=self.concurrency // n + (1 if index < self.concurrency % n else 0),
            max_outstanding=max(1, self.max_outstanding // n),
            seed=self.derived_seed(index),
            processes=1,
            phase=index / self.rate if self.rate > 0 else 0.0,
        )

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["models"] = list(self.models)
        out["out"] = None if self.out is None else str(self.out)
        del out["phase"]
        out["mode"] = "closed" if self.closed_loop else "open"
        return out
