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

A replica must pay (``trial``, on by default). Another worker serving a
model costs batching (each worker's batches get smaller) and, where workers
share cores, CPU the owner was using: measured on two shared cores, a second
replica of the one hot model cut the cluster's throughput by 12-30%, while on
workers with cores of their own it adds a worker's capacity. The scaler cannot
tell these apart from in-flight counts, so each growth is a trial. Over the
sustained-hot window before the growth the scaler takes the model's answers a
second and the mean time a request spends in this balancer (admission to
answer); after a settling time of ``sustain`` seconds (the new replica loads
the model), over the next ``sustain`` seconds either the answers a second
must be at least ``KEEP_GAIN`` higher or the mean time that much lower, or
the model goes back to its previous count and may not grow again for a
back-off (``cooldown``, doubling with each failed trial in a row, at most
``MAX_BACKOFF``). Only answers count (200s: failures and refusals are quick and
would flatter a replica that sheds). With too few answers in either window to
judge, the replica stays ("undecided"); when the index changes the model's
count during a trial, the trial is dropped. Traffic that rises during a trial
can keep a replica that did not pay; the cooldown removes it once the traffic
falls. Both measures, because load differs: with a fixed number of clients (closed
loop) a replica that adds capacity raises the rate and so lowers the mean
time; with arrivals of their own (open loop) it shortens the queue and the
time while the rate stays what arrives, and past capacity it raises the rate
even while a growing queue still raises the time. One that costs more than
it adds does neither.

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

KEEP_GAIN = 0.1  # a trial replica stays when the answers a second rose, or the mean time fell, by this share
MIN_ANSWERS = 20  # answers a window needs before a trial can judge it
MAX_BACKOFF = 600.0  # seconds, the longest wait after failed trials before a model may grow again
_MAX_DOUBLINGS = 32  # failed trials counted in a row (the back-off has long reached MAX_BACKOFF)


@dataclass(frozen=True, slots=True)
class ReplicaSettings:
    max_replicas: int = 4  # the default cap (a model's config may set its own)
    grow_at: float = 8.0  # sustained requests in flight per replica that add one
    sustain: float = 3.0  # seconds the load must stay high before a replica is added
    cooldown: float = 30.0  # seconds it must stay low before one is removed
    trial: bool = True  # keep a new replica only if the model's answers got faster or more (module docstring)

    def __post_init__(self) -> None:
        if self.max_replicas < 1 or not self.grow_at > 0 or not self.sustain > 0 or not self.cooldown > 0:
            raise ValueError("replica limits, thresholds and times must be positive")


Mark = tuple[int, float, float]  # (answers so far, their seconds summed, the clock) at a window's start


@dataclass(slots=True)
class _Trial:
    before: int  # replicas before the growth (what a failed trial goes back to)
    baseline: tuple[float, float]  # (mean seconds a request, answers a second) over the hot window before
    starts: float  # when measuring starts (after the new replica settled)
    ends: float
    mark: Mark | None = None  # when measuring started


class _ModelLoad:
    __slots__ = ("average", "failures", "hot", "low_since", "retry_after", "sampled", "trial")

    def __init__(self, now: float) -> None:
        self.average = 0.0
        self.sampled = now
        self.hot: Mark | None = None  # taken when the load became high (its clock: since when)
        self.low_since: float | None = None
        self.trial: _Trial | None = None
        self.failures = 0  # failed trials in a row
        self.retry_after = 0.0  # no growth before this time (after a failed trial)


class ReplicaScaler:
    def __init__(self, settings: ReplicaSettings | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or ReplicaSettings()
        self._clock = clock
        self.inflight: dict[str, int] = {}  # per model, kept by the router
        self.counts: dict[str, int] = {}  # models above one replica (read by the policy)
        self.limits: dict[str, tuple[int, int]] = {}  # per-model (min, max) from the index
        self.trials: dict[str, int] = {"kept": 0, "reverted": 0, "undecided": 0}  # outcomes (a metric)
        self._loads: dict[str, _ModelLoad] = {}
        self._answered: dict[str, list[float]] = {}  # per model: [answers, seconds], running totals

    def begin(self, model: str) -> None:
        self.inflight[model] = self.inflight.get(model, 0) + 1

    def end(self, model: str, seconds: float | None = None) -> None:
        """A request of ``model`` is done; ``seconds``: how long its answer took (for
        trials; given only for a model's answer, not for a failure or a refusal)."""
        self.inflight[model] -= 1
        if seconds is not None:
            totals = self._answered.get(model)
            if totals is None:
                self._answered[model] = [1, seconds]
            else:
                totals[0] += 1
                totals[1] += seconds

    def replicas(self, model: str) -> int:
        return self.counts.get(model, 1)

    def set_limits(self, limits: Mapping[str, tuple[int, int | None]]) -> None:
        """Per-model (min, max) replicas from the index (max None: the default cap)."""
        default = self.settings.max_replicas
        self.limits = {m: (max(1, lo), max(lo, hi if hi is not None else default)) for m, (lo, hi) in limits.items()}
        for model, (lo, hi) in self.limits.items():
            current = min(max(self.replicas(model), lo), hi)
            if current != self.replicas(model):
                self._set(model, current)
                self._drop_trial(model)  # the index changed the count: nothing left to judge
        for model in [m for m in self.counts if m not in self.limits and self.counts[m] > default]:
            self._set(model, default)

    def _drop_trial(self, model: str) -> None:
        load = self._loads.get(model)
        if load is not None and load.trial is not None:
            load.trial = None
            load.hot = None

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
            cold = load.average < 0.01 and not self.inflight.get(model) and model not in self.counts
            if cold and load.trial is None and now >= load.retry_after:
                del self._loads[model]  # cold again: forget it
                self.inflight.pop(model, None)
                self._answered.pop(model, None)

    def answered(self, model: str) -> tuple[int, float]:
        """Answers of ``model`` so far and the seconds they took, summed (while it is hot)."""
        totals = self._answered.get(model)
        return (0, 0.0) if totals is None else (int(totals[0]), totals[1])

    def _mark(self, model: str, now: float) -> Mark:
        answers, seconds = self.answered(model)
        return answers, seconds, now

    def _since(self, model: str, mark: Mark | None, now: float) -> tuple[float, float] | None:
        """(mean seconds a request, answers a second) since ``mark``; None with too few
        answers to judge."""
        if mark is None or now <= mark[2]:
            return None
        answers, seconds = self.answered(model)
        count = answers - mark[0]
        return ((seconds - mark[1]) / count, count / (now - mark[2])) if count >= MIN_ANSWERS else None

    def _decide(self, model: str, load: _ModelLoad, now: float) -> None:
        s = self.settings
        if load.trial is not None:
            self._judge(model, load, load.trial, now)
            return
        lo, hi = self._bounds(model)
        replicas = self.replicas(model)
        if replicas < hi and load.average > s.grow_at * replicas:
            load.low_since = None
            if now < load.retry_after:
                return  # a replica did not pay here lately
            if load.hot is None:
                load.hot = self._mark(model, now)
            elif now - load.hot[2] >= s.sustain:
                self._set(model, replicas + 1)
                baseline = self._since(model, load.hot, now)
                load.hot = self._mark(model, now)  # the next one needs its own sustained load
                log.info("model %s is hot: %d replicas (%.1f in flight)", model, replicas + 1, load.average)
                if s.trial and baseline is not None:
                    load.trial = _Trial(replicas, baseline, now + s.sustain, now + 2 * s.sustain)
            return
        load.hot = None
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

    def _judge(self, model: str, load: _ModelLoad, trial: _Trial, now: float) -> None:
        """A replica on trial: measure after it settled, then keep it or go back."""
        if trial.mark is None:
            if now >= trial.starts:
                trial.mark = self._mark(model, now)
            return
        if now < trial.ends:
            return
        load.trial = None
        load.hot = None  # a further growth needs a hot window of its own
        measured = self._since(model, trial.mark, now)
        if measured is None:  # too few answers to judge: the replica stays
            self.trials["undecided"] += 1
            return
        (was_mean, was_rate), (mean, rate), gain = trial.baseline, measured, KEEP_GAIN
        if mean <= was_mean * (1 - gain) or rate >= was_rate * (1 + gain):
            load.failures = 0
            self.trials["kept"] += 1
            return
        lo, hi = self._bounds(model)
        back = min(max(trial.before, lo), hi)
        self._set(model, back)
        load.failures = min(load.failures + 1, _MAX_DOUBLINGS)
        backoff = min(self.settings.cooldown * 2 ** (load.failures - 1), MAX_BACKOFF)
        load.retry_after = now + backoff
        self.trials["reverted"] += 1
        log.info(
            "model %s: a replica did not pay (%.1f ms and %.0f answers/s against %.1f and %.0f before): "
            "back to %d for %.0f s",
            model, mean * 1e3, rate, was_mean * 1e3, was_rate, back, backoff,
        )  # fmt: skip
