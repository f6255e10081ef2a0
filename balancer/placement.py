"""Placement: each model's home is the first worker on its ring preference list
with room for it, where room is the worker's fair share of the catalogue (its
share of the capacity, plus a little) and its memory.

The ring alone places models by hash: with few models per worker the split is
uneven (twelve models over two workers: 6/6 in a quarter of the rings, 8/4 or
worse in four of ten). Where each worker's memory holds about its fair share,
the worker given too many pages models in and out on every pass while the
other has room to spare (measured: 2,881 loads in 20 s on one worker, none on
the other, a third of the throughput gone); where memory is plentiful, the
worker given two thirds of the models takes two thirds of their traffic while
the other idles (measured: 7,558 against 3,914 answers in 8 s), and the
bounded-load rule does not even it out: with two workers its cap never binds.
Placement keeps affinity (one home per model) and the ring's order, and bounds
what each worker is given, as consistent hashing with bounded loads does for
requests (Mirrokni, Thorup and Zadimoghaddam), by bytes of weights:

- models in a fixed order, largest first, then by name (first-fit decreasing:
  big models find room before small ones fill it);
- each to the first worker in its preference list with room for it: its placed
  bytes plus the model's size within (1 + ``BALANCE_SLACK``) times its share of
  all the models' bytes (shares by the capacities the workers report, equal
  where not known), and within its capacity (0: no bound);
- failing that, the first with memory for it (a model larger than a share's
  slack may overshoot the balance, never the memory); failing that, its ring
  owner (as without placement).

Pure and deterministic: balancers given the same members, capacities and index
place alike. The price of the balance is movement: when a worker joins or
leaves, the models it takes or held move, and a few others may move to keep
the shares (docs/benchmarks.md has the measured counts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

BALANCE_SLACK = 0.1  # a worker may be given up to 10% more than its share of the models' bytes


def place(
    sizes: Mapping[str, int],
    preference: Callable[[str], Sequence[str]],
    capacities: Mapping[str, int],
    slack: float = BALANCE_SLACK,
) -> dict[str, str]:
    """Model -> its home worker. ``sizes``: bytes of each model's weights (0: not
    known, fits anywhere); ``preference``: a model's workers in ring order (those
    placed over); ``capacities``: every worker placed over and the bytes it may be
    given (0: no bound); ``slack``: how far past its fair share a worker may be filled."""
    bounds = fair_bounds(capacities, sum(sizes.values()), slack)
    placed: dict[str, int] = {}
    homes: dict[str, str] = {}
    for model in sorted(sizes, key=lambda m: (-sizes[m], m)):
        order = preference(model)
        if not order:
            continue
        size = sizes[model]
        home = next((w for w in order if _room(w, size, placed, capacities, bounds)), None)
        if home is None:
            home = next((w for w in order if _fits(capacities.get(w, 0), placed.get(w, 0), size)), order[0])
        placed[home] = placed.get(home, 0) + size
        homes[model] = home
    return homes


def capacity_weights(capacities: Mapping[str, int]) -> dict[str, float]:
    """Each worker's weight: its capacity, or where not known (0) the smallest known
    (the bounded-load rule's shares and placement's fair shares)."""
    fallback = min((c for c in capacities.values() if c > 0), default=1)
    return {w: float(c or fallback) for w, c in capacities.items()}


def fair_bounds(capacities: Mapping[str, int], total: int, slack: float) -> dict[str, float]:
    """Each worker's fair share of ``total`` bytes, by ``capacity_weights``, times 1 + ``slack``."""
    weights = capacity_weights(capacities)
    whole = sum(weights.values())
    if not whole or not total:
        return {}
    return {w: (1 + slack) * total * weight / whole for w, weight in weights.items()}


def _room(
    worker: str, size: int, placed: Mapping[str, int], capacities: Mapping[str, int], bounds: Mapping[str, float]
) -> bool:
    already = placed.get(worker, 0)
    bound = bounds.get(worker)
    return (bound is None or already + size <= bound) and _fits(capacities.get(worker, 0), already, size)


def _fits(capacity: int, placed: int, size: int) -> bool:
    return capacity <= 0 or placed + size <= capacity
