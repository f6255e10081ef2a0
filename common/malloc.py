"""glibc's malloc arenas: a cap for processes whose threads allocate in turn.

glibc gives threads that contend for malloc arenas of their own, up to eight per
core, and an arena's freed memory mostly stays with it. A worker's inference
threads allocate batches of changing sizes, so each arena keeps its own high
water mark and the process's RSS climbs in steps long after warm-up: in
`affinity bench soak` at 629 req/s a worker grew 15.8% over ten minutes, and
2.7% with the arenas capped at two (docs/reliability.md). ``limit_arenas`` sets
the cap (``mallopt(M_ARENA_MAX)``) for arenas created from then on, so it is
called before the process starts its threads; ``MALLOC_ARENA_MAX`` in the
environment, where set, wins (glibc reads it itself).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_ARENA_MAX = -8  # glibc's malloc.h


def limit_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas at ``count`` (0: leave glibc's default); whether the
    cap is now set. False off glibc, or where the environment already says."""
    if count <= 0 or not sys.platform.startswith("linux") or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_ARENA_MAX, count) == 1)
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
