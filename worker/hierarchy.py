"""The memory hierarchy a worker runs with, built from its config.

    gpu     a CUDA device (``--device auto`` finds one; ``stand-in`` is the counted
            CPU-backed device the tests use), budget ``--gpu-memory``: bytes, or a
            share of the device's memory; no device or a zero budget: no GPU tier
    cpu     budget ``--cpu-memory``: bytes, or a share of the machine's RAM (the
            container's limit when lower)
    disk    ``--disk-cache-dir`` with ``--disk-cache`` bytes, for downloads from
            the remote store (a temporary directory when none is given)
    remote  ``--remote-store`` (``--remote-endpoint`` for S3-compatible servers)

The local repository (``--models``) is read in place and never evicted from.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from worker.catalog import Catalog
from worker.config import WorkerConfig
from worker.custom_code import CodePolicy
from worker.device import Device, StandInDevice, cuda_device
from worker.disk_cache import DiskCache
from worker.eviction import make_policy
from worker.formats import ModelPager
from worker.host_memory import usable_memory
from worker.memory import MemoryConfig, MemoryManager
from worker.remote_store import open_store
from worker.runner import LoadedModel
from worker.tiers import MemoryObserver

log = logging.getLogger(__name__)


def pick_device(name: str) -> Device | None:
    """The device ``--device`` names; ValueError when a named CUDA device is missing."""
    if name == "none":
        return None
    if name == "stand-in":
        return StandInDevice()
    if name == "auto":
        return cuda_device()
    index = int(name.partition(":")[2] or 0)
    device = cuda_device(index)
    if device is None:
        raise ValueError(f"--device {name}: torch sees no such CUDA device")
    return device


def device_memory(device: Device) -> int:
    """The total a ``--gpu-memory`` share is taken of: the device's memory (host RAM for the stand-in)."""
    free_and_total = getattr(device, "free_and_total", None)
    return int(free_and_total()[1]) if free_and_total is not None else usable_memory()


@dataclass
class Hierarchy:
    memory: MemoryManager[LoadedModel]
    catalog: Catalog
    disk_cache: DiskCache | None
    temp_dir: Path | None  # a disk cache of our own making, removed at close

    async def close(self) -> None:
        await self.memory.close()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def build(
    models: Path | None,
    cpu_budget: int,
    gpu_budget: int,
    device: Device | None,
    eviction: str = "lru",
    max_loads: int = 1,
    load_wait: float = 30.0,
    remote_store: str | None = None,
    remote_endpoint: str | None = None,
    disk_cache_dir: Path | None = None,
    disk_cache_budget: int = 10 << 30,
    observer: MemoryObserver | None = None,
    allow_code: tuple[str, ...] = (),
) -> Hierarchy:
    """The manager and catalog over these tiers (on the event loop; nothing scanned yet)."""
    store = open_store(remote_store, remote_endpoint) if remote_store else None
    catalog = Catalog(models, store)
    disk_cache, temp_dir = None, None
    if store is not None:
        if disk_cache_dir is None:
            disk_cache_dir = temp_dir = Path(tempfile.mkdtemp(prefix="affinity-disk-cache-"))
            log.info("disk cache in a temporary directory (removed at exit): %s", temp_dir)
        disk_cache = DiskCache(disk_cache_dir, disk_cache_budget, store, make_policy(eviction), observer)
    if device is None or gpu_budget <= 0:
        device, gpu_budget = None, 0
    config = MemoryConfig(
        cpu_budget=cpu_budget, gpu_budget=gpu_budget, eviction=eviction, max_loads=max_loads, wait_timeout=load_wait
    )
    # Model code may come only from allowed packages, never from where models are data.
    data_dirs = [d for d in (models, disk_cache_dir, _store_dir(remote_store)) if d is not None]
    pager = ModelPager(CodePolicy(allow_code, tuple(data_dirs)))
    memory: MemoryManager[LoadedModel] = MemoryManager(
        config, pager, catalog.local_path, device=device, disk_cache=disk_cache, observer=observer
    )
    log.info(
        "memory tiers: gpu %s, cpu %d bytes, disk cache %s, remote %s, eviction %s",
        f"{gpu_budget} bytes on {device.name}" if device is not None else "off", cpu_budget,
        f"{disk_cache_budget} bytes" if disk_cache is not None else "off", store.url if store else "off", eviction,
    )  # fmt: skip
    return Hierarchy(memory, catalog, disk_cache, temp_dir)


def from_config(config: WorkerConfig, observer: MemoryObserver | None = None) -> Hierarchy:
    device = pick_device(config.device)
    if device is None and config.gpu_memory.share is None and config.gpu_memory.bytes > 0:
        log.warning("--gpu-memory is set but there is no GPU device: the GPU tier is off")
    gpu_budget = config.gpu_memory.resolve(device_memory(device)) if device is not None else 0
    return build(
        config.models,
        config.cpu_memory.resolve(usable_memory()),
        gpu_budget,
        device,
        config.eviction,
        config.max_loads,
        config.load_wait,
        config.remote_store,
        config.remote_endpoint,
        config.disk_cache_dir,
        config.disk_cache,
        observer,
        config.allow_code,
    )


def _store_dir(url: str | None) -> Path | None:
    """A directory store's root (``file:///dir``), which is data like the repository."""
    return Path(urlparse(url).path) if url and urlparse(url).scheme == "file" else None
