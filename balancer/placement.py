"""Memory-aware placement: each model's home is the first worker on its ring
preference list with memory left for it.

The ring alone places models by hash: with few models per worker the split is
uneven (twelve models over two workers: 8/4 or worse in four rings of ten),
and where each worker's memory holds about its fair share, the worker given
too many pages models in and out on every pass while the other has room to
spare (measured: 2,881 loads in 20 s on one worker, none on the other, a
third of the throughput gone). Placement keeps affinity (one home per model)
and the ring's order, and bounds what each worker is given by its memory:

- models in a fixed order, largest first, then by name (first-fit decreasing:
  big models find room before small ones fill it);
- each to the first worker in its preference list whose placed bytes plus the
  model's size fit its capacity (the memory budget it reports; 0, not known,
  has room for anything);
- a model that fits nowhere stays with its ring owner (as without placement).

With room for everything (the usual case: budgets larger than the catalogue),
every home is the ring owner. Pure and deterministic: balancers given the
same members, capacities and index place alike. When a worker leaves, the
models it held move, and a model later in the order may move to make room
for them (capacity is finite: something must).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence


def place(
    sizes: Mapping[str, int], preference: Callable[[str], Sequence[str]], capacities: Mapping[str, int]
) -> dict[str, str]:
    """Model -> its home worker. ``sizes``: bytes of each model's weights (0: not
    known, fits anywhere); ``preference``: a model's workers in ring order (the
    admitted ones); ``capacities``: bytes each worker may be given (0: no bound)."""
    placed: dict[str, int] = {}
    homes: dict[str, str] = {}
    for model in sorted(sizes, key=lambda m: (-sizes[m], m)):
        order = preference(model)
        if not order:
            continue
        size = sizes[model]
        home = next((w for w in order if _fits(capacities.get(w, 0), placed.get(w, 0), size)), order[0])
        placed[home] = placed.get(home, 0) + size
        homes[model] = home
    return homes


def _fits(capacity: int, placed: int, size: int) -> bool:
    return capacity <= 0 or placed + size <= capacity
