"""A lease on a resident model, and the manager's record of a resident model.

A request holds a ``Lease`` while it runs; the manager never evicts a model
whose leases are not all released. ``source`` says where the model was when
the request asked (gpu, cpu, disk or remote: the ``X-Model-Source`` header),
``tier`` where it serves from (gpu or cpu), and ``device`` the device its
tensors are on (None on the host).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

from worker.device import Device
from worker.tiers import GPU

Key = tuple[str, str]
M = TypeVar("M")


@dataclass(slots=True, eq=False)
class Resident(Generic[M]):
    key: Key
    size: int
    tier: str  # GPU or CPU
    host: M  # kept while on the GPU too: mapped file pages, so demotion copies nothing
    device_copy: M | None
    host_seconds: float  # measured cost of loading into each tier (the GDS credit's cost)
    device_seconds: float = 0.0
    refs: int = 0
    promoting: bool = False
    unloading: bool = False  # dropped when the last lease is released
    device_capable: bool = True  # the format can serve from a device (ONNX cannot, here)

    @property
    def model(self) -> M:
        return self.device_copy if self.tier == GPU and self.device_copy is not None else self.host


class Lease(Generic[M]):
    """One request's hold on a resident model; ``release`` it on the event loop
    (once; later calls are no-ops), or use it as a context manager."""

    __slots__ = ("_on_release", "_released", "_resident", "device", "key", "model", "source", "tier")

    def __init__(
        self, resident: Resident[M], source: str, device: Device | None, on_release: Callable[[Resident[M]], None]
    ) -> None:
        self._resident = resident
        self._on_release = on_release
        self._released = False
        self.key = resident.key
        self.model: M = resident.model
        self.tier = resident.tier
        self.source = source
        self.device = device

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._on_release(self._resident)

    def __enter__(self) -> Lease[M]:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
