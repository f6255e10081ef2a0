"""The accelerator behind the GPU tier: a real CUDA device, or a stand-in.

The GPU tier's code only ever moves tensors through a ``Device``: ``copy_in``
(host to device, once per tensor when a model is paged up) and ``copy_out``
(device to host, for outputs). ``StandInDevice`` keeps its "device" tensors in
fresh CPU memory and counts every allocation, byte and transfer, so the whole
GPU path (placement, budgets, demotion, freeing) runs in every test on a
machine without a GPU; ``CudaDevice`` is the same interface over ``cuda:N``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch.multiprocessing.reductions import StorageWeakRef


@dataclass(slots=True)
class TransferCounts:
    allocations: int = 0
    allocated_bytes: int = 0
    host_to_device: int = 0
    host_to_device_bytes: int = 0
    device_to_host: int = 0
    device_to_host_bytes: int = 0


class Device:
    """Where the GPU tier's tensors live; counts what crosses the bus."""

    def __init__(self, torch_device: torch.device) -> None:
        self.torch_device = torch_device
        self.counts = TransferCounts()
        self._lock = threading.Lock()  # loads run in a thread pool

    @property
    def name(self) -> str:
        return str(self.torch_device)

    def copy_in(self, tensor: torch.Tensor) -> torch.Tensor:
        """One host-to-device copy of ``tensor`` into newly allocated device memory."""
        out = self._allocate_like(tensor)
        out.copy_(tensor)
        nbytes = tensor.numel() * tensor.element_size()
        with self._lock:
            self.counts.allocations += 1
            self.counts.allocated_bytes += nbytes
            self.counts.host_to_device += 1
            self.counts.host_to_device_bytes += nbytes
        return out

    def copy_out(self, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.to("cpu", copy=True)
        with self._lock:
            self.counts.device_to_host += 1
            self.counts.device_to_host_bytes += tensor.numel() * tensor.element_size()
        return out

    def _allocate_like(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.empty(tensor.shape, dtype=tensor.dtype, device=self.torch_device)

    def live_bytes(self) -> int:
        """Device memory held by tensors still alive."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for queued copies (a no-op where copies are synchronous)."""


class StandInDevice(Device):
    """A device backed by CPU memory, for tests: the GPU tier's exact code path,
    with its allocations tracked until the tensors holding them are freed."""

    def __init__(self) -> None:
        super().__init__(torch.device("cpu"))
        self._live: list[tuple[StorageWeakRef, int]] = []

    @property
    def name(self) -> str:
        return "stand-in"

    def _allocate_like(self, tensor: torch.Tensor) -> torch.Tensor:
        out = torch.empty(tensor.shape, dtype=tensor.dtype)
        with self._lock:
            self._live.append((StorageWeakRef(out.untyped_storage()), out.numel() * out.element_size()))
        return out

    def live_bytes(self) -> int:
        with self._lock:
            self._live = [(ref, n) for ref, n in self._live if not ref.expired()]
            return sum(n for _, n in self._live)


class CudaDevice(Device):
    def __init__(self, index: int = 0) -> None:
        super().__init__(torch.device("cuda", index))

    def live_bytes(self) -> int:
        return int(torch.cuda.memory_allocated(self.torch_device))

    def free_and_total(self) -> tuple[int, int]:
        free, total = torch.cuda.mem_get_info(self.torch_device)
        return int(free), int(total)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.torch_device)


def cuda_device(index: int = 0) -> CudaDevice | None:
    """The CUDA device, or None where torch sees none (a CPU build, no driver)."""
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        return None
    return CudaDevice(index)
