"""How long a batch waits for more requests (Triton's ``max_queue_delay``, adaptive).

A drain that found fewer rows than the model's batch limit may hold the batch
open for up to ``window`` seconds, so a request about to arrive joins this
forward instead of paying one of its own. Waiting pays only when all of these
hold, otherwise the batch goes at once (a lone request is never delayed for
nothing):

- the window is on (> 0) and the batch is not full;
- no other model's requests are waiting for the inference thread (holding it
  would delay them for a maybe);
- requests for this model have been arriving closer together than the window
  (an exponentially weighted mean of the gaps between arrivals), so one is
  expected within it.

The wait never outlasts the window measured from when the batch was taken.
Pure logic with the clock passed in, so tests drive time instead of sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass

WEIGHT = 0.2  # of the newest gap in the running mean


@dataclass(slots=True)
class Arrivals:
    """The running mean gap between one model's requests."""

    last: float | None = None
    gap: float | None = None

    def arrived(self, now: float) -> None:
        if self.last is not None:
            gap = now - self.last
            self.gap = gap if self.gap is None else (1 - WEIGHT) * self.gap + WEIGHT * gap
        self.last = now


def hold_for(
    now: float, taken_at: float, window: float, rows: int, max_rows: int, others_waiting: bool, arrivals: Arrivals
) -> float:
    """Seconds to keep the batch open from ``now``: 0 when waiting would not pay."""
    if window <= 0 or others_waiting or (max_rows > 0 and rows >= max_rows):
        return 0.0
    if arrivals.gap is None or arrivals.gap > window:
        return 0.0
    return min(window, max(0.0, taken_at + window - now))  # min: float rounding may add an ulp
