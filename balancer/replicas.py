"""Hot-model replicas: how many workers a model's requests spread over.

A cold model lives on one worker (its ring owner). A model whose requests in
flight stay high gets more replicas: the next workers on its ring, so replicas
are sticky too and every balancer picks the same ones. TFServingCache grows
per-model replica sets the same way; here the signal is sustained
concurrency (requests in flight through this balancer), not one burst.

Every ``tick`` (the balancer calls it a few times a second) samples each
model's in-flight count into an exponentially weighted average with a time
constant of ``sustain / 2``; then

- grow by one when the average has stayed above ``grow_at`` x replicas for
  ``sustain`` seconds (up to the model's maximum),
- shrink by one when it has stayed below ``grow_at`` x (replicas - 1) / 2 for
  ``cooldown`` seconds (down to the model's minimum): the gap between the two
  thresholds keeps a model from flapping.

Per-model limits come from the repository index (config.json ``"replicas":
{"min": 1, "max": 4}``); the rest use ``1 .. max_replicas``. Pure logic with an
injectable clock; ``counts`` is read by the affinity policy (absent means 1).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReplicaSettings:
    max_replicas: int = 4  # the default cap (a model's config may set its own)
    grow_at: float = 8.0  # sustained requests in flight per replica that add one
    sustain: float = 3.0  # seconds the load must stay high before a replica is added
    cooldown: float = 30.0  # seconds it must stay low before one is removed

    def __post_init__(self) -> None:
        if self.max_replicas < 1 or not self.grow_at > 0 or not self.sustain > 0 or not self.cooldown > 0:
            raise ValueError("replica limits, thresholds and times must be positive")


class _ModelLoad:
    __slots__ = ("average", "high_since", "low_since", "sampled")

    def __init__(self, now: float) -> None:
        self.average = 0.0
        self.sampled = now
        self.high_since: float | None = None
        self.low_since: float | None = None


class ReplicaScaler:
    def __init__(self, settings: ReplicaSettings | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or ReplicaSettings()
        self._clock = clock
        self.inflight: dict[str, int] = {}  # per model, kept by the router
        self.counts: dict[str, int] = {}  # models above one replica (read by the policy)
        self.limits: dict[str, tuple[int, int]] = {}  # per-model (min, max) from the index
        self._loads: dict[str, _ModelLoad] = {}

    def begin(self, model: str) -> None:
        self.inflight[model] = self.inflight.get(model, 0) + 1

    def end(self, model: str) -> None:
        self.inflight[model] -= 1

    def replicas(self, model: str) -> int:
        return self.counts.get(model, 1)

    def set_limits(self, limits: Mapping[str, tuple[int, int | None]]) -> None:
        """Per-model (min, max) replicas from the index (max None: the default cap)."""
        default = self.settings.max_replicas
        self.limits = {m: (max(1, lo), max(lo, hi if hi is not None else default)) for m, (lo, hi) in limits.items()}
        for model, (lo, hi) in self.limits.items():
            current = min(max(self.replicas(model), lo), hi)
            self._set(model, current)
        for model in [m for m in self.counts if m not in self.limits and self.counts[m] > default]:
            self._set(model, default)

    def _bounds(self, model: str) -> tuple[int, int]:
        return self.limits.get(model, (1, self.settings.max_replicas))

    def _set(self, model: str, count: int) -> None:
        if count <= 1:
            self.counts.pop(model, None)
        else:
            self.counts[model] = count

    def tick(self) -> None:
        s, now = self.settings, self._clock()
        for model in set(self.inflight) | set(self._loads):
            load = self._loads.get(model)
            if load is None:
                load = self._loads[model] = _ModelLoad(now)
            elapsed = max(now - load.sampled, 0.0)
            load.sampled = now
            weight = min(1.0, elapsed / (s.sustain / 2))
            load.average += weight * (self.inflight.get(model, 0) - load.average)
            self._decide(model, load, now)
            if load.average < 0.01 and not self.inflight.get(model) and model not in self.counts:
                del self._loads[model]  # cold again: forget it
                self.inflight.pop(model, None)

    def _decide(self, model: str, load: _ModelLoad, now: float) -> None:
        s = self.settings
        lo, hi = self._bounds(model)
        replicas = self.replicas(model)
        if replicas < hi and load.average > s.grow_at * replicas:
            load.low_since = None
            if load.high_since is None:
                load.high_since = now
            elif now - load.high_since >= s.sustain:
                self._set(model, replicas + 1)
                load.high_since = now  # the next one needs its own sustained load
                log.info("model %s is hot: %d replicas (%.1f in flight)", model, replicas + 1, load.average)
            return
        load.high_since = None
        if replicas > lo and load.average < s.grow_at * (replicas - 1) / 2:
            if load.low_since is None:
                load.low_since = now
            elif now - load.low_since >= s.cooldown:
                self._set(model, replicas - 1)
                load.low_since = now
                log.info("model %s cooled: %d replicas", model, replicas - 1)
            return
        load.low_since = None
        if replicas < lo:
            self._set(model, lo)
