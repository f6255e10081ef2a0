"""What memory this host and this process have: the totals budgets are shares
of, and the process's own footprint for ``/admin/memory``.

The tiers count the tensors' bytes; the kernel counts pages. RSS counts every
resident page the process maps, shared ones in full, so two workers mapping one
model's file both show it; PSS (proportional set size) splits each shared page
between the processes that map it, so summing PSS over the workers of a host
counts a shared model once. Both come from ``/proc/self/smaps_rollup`` (Linux
4.14+); elsewhere they are None.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SMAPS_ROLLUP = Path("/proc/self/smaps_rollup")
CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def physical_memory() -> int:
    """The machine's RAM in bytes."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cgroup_limit() -> int | None:
    """The memory limit of this process's container (cgroup v2 or v1), None when unlimited."""
    for path in CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 writes a huge number for "no limit"
            return int(text)
    return None


def usable_memory() -> int:
    """RAM a budget may be a share of: the machine's, or the container's limit when lower."""
    limit = cgroup_limit()
    total = physical_memory()
    return min(total, limit) if limit is not None else total


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    rss: int | None
    pss: int | None

    def to_json(self) -> dict[str, Any]:
        return {"rss_bytes": self.rss, "pss_bytes": self.pss}


def process_memory(path: Path = SMAPS_ROLLUP) -> ProcessMemory:
    """This process's RSS and PSS in bytes, from smaps_rollup (blocking, cheap: one read)."""
    found: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return ProcessMemory(None, None)
    for line in text.splitlines():
        field, _, rest = line.partition(":")
        if field in ("Rss", "Pss"):
            found[field] = int(rest.split()[0]) * 1024  # kB
    return ProcessMemory(found.get("Rss"), found.get("Pss"))
