"""Which model each request is for: uniform, or Zipf over the models' ranks.

``zipf:s`` gives the model of rank k (1-based, in the order the target lists
them) a probability proportional to 1 / k**s, the shape of request popularity
in most model fleets (a few hot models, a long cold tail). Pure and seeded.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Popularity:
    """``uniform`` or ``zipf`` with its exponent (``zipf:0`` is uniform)."""

    kind: str = "uniform"
    exponent: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Popularity:
        name, _, arg = text.strip().partition(":")
        if name == "uniform" and not arg:
            return cls()
        if name == "zipf":
            try:
                exponent = float(arg) if arg else 1.0
            except ValueError:
                raise ValueError(f"zipf exponent must be a number, not {arg!r}") from None
            if not exponent >= 0:
                raise ValueError(f"zipf exponent must be >= 0, not {exponent}")
            return cls("zipf", exponent)
        raise ValueError(f"unknown popularity {text!r} (uniform, or zipf:S such as zipf:1.1)")

    def weights(self, n: int) -> list[float]:
        """Probability of each rank, 1..n, summing to 1."""
        if n <= 0:
            raise ValueError("popularity needs at least one model")
        raw = [1.0] * n if self.kind == "uniform" else [1.0 / (k**self.exponent) for k in range(1, n + 1)]
        total = sum(raw)
        return [w / total for w in raw]

    def __str__(self) -> str:
        return "uniform" if self.kind == "uniform" else f"zipf:{self.exponent:g}"


class ModelPicker:
    """Draws model names by popularity: one uniform draw and a bisection."""

    def __init__(self, names: Sequence[str], popularity: Popularity, rng: random.Random) -> None:
        self.names = list(names)
        self.probabilities = popularity.weights(len(self.names))
        self._cdf = list(itertools.accumulate(self.probabilities))
        self._cdf[-1] = 1.0  # rounding must never leave the last rank unreachable
        self._rng = rng

    def pick(self) -> int:
        """Index of the next model in ``names``."""
        return bisect.bisect_right(self._cdf, self._rng.random())
