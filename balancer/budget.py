"""The retry budget: retries stay a bounded fraction of traffic, with a floor.

Linkerd's shape (after Finagle's ``RetryBudget``): over a sliding window of
``window`` seconds, a retry is allowed while

    retries in the window < ratio x requests in the window + floor x window

so retries add at most ``ratio`` (20%) to the load a struggling cluster sees,
yet a quiet balancer can still retry ``floor`` (10) times a second: one dead
worker's share of a burst always fails over, while a cluster-wide outage
cannot turn into a retry storm. The window is kept in ``slots`` buckets (a
request costs one clock read and two additions); the clock is injectable.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RetryBudget:
    def __init__(
        self,
        ratio: float = 0.2,
        floor: float = 10.0,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        slots: int = 10,
    ) -> None:
        if ratio < 0 or floor < 0 or window <= 0 or slots < 1:
            raise ValueError("the retry ratio and floor cannot be negative; the window must be positive")
        self.ratio = ratio
        self.floor = floor
        self.window = window
        self._clock = clock
        self._width = window / slots
        self._requests = [0] * slots
        self._retries = [0] * slots
        self._slot = int(clock() / self._width)
        self.requests = 0  # in the window
        self.retries = 0  # in the window

    def _advance(self) -> None:
        slot = int(self._clock() / self._width)
        if slot == self._slot:
            return
        n = len(self._requests)
        for s in range(self._slot + 1, min(slot, self._slot + n) + 1):
            i = s % n
            self.requests -= self._requests[i]
            self.retries -= self._retries[i]
            self._requests[i] = self._retries[i] = 0
        self._slot = slot

    def request(self) -> None:
        """A request was sent (its first try)."""
        self._advance()
        self._requests[self._slot % len(self._requests)] += 1
        self.requests += 1

    def allowed(self) -> bool:
        self._advance()
        return self.retries < self.ratio * self.requests + self.floor * self.window

    def try_retry(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        if not self.allowed():
            return False
        self._retries[self._slot % len(self._retries)] += 1
        self.retries += 1
        return True
