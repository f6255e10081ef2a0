"""The memory manager: pages models between GPU, CPU, local disk and a remote store.

A request takes a ``Lease`` on its model and releases it when answered; a model
under lease is never evicted. ``try_acquire`` is the hot path: a model already
in its serving tier is leased without an await. ``acquire`` pages a model in:
from the repository or the disk cache, or downloaded from the remote store into
the disk cache first. Concurrent callers for one model share one page-in
(singleflight per model, no global lock across awaits), and at most
``max_loads`` loads run at once, in a thread pool.

Placement: the GPU tier when there is a device, the model's format can use it
and the model fits its budget, else the CPU tier. A model's bytes are known before loading (the pager reads the
weights' header), so the manager reserves them first, evicting by the tier's
policy among models not in use, not pinned and not awaited; no tier ever holds
more than its budget, loads in flight included. A GPU victim is demoted to the
CPU tier when that has room (its host mapping is kept, so demotion copies
nothing), else dropped; a CPU victim is dropped (its file stays on disk). A
download that finds the disk cache full of resident models' files drops idle
ones from memory so their files can go. When what could make room is in use,
``acquire`` waits for a release, then gives up with Overloaded. A CPU-resident
model that fits the GPU tier is promoted on its next ``acquire`` when room can
be made there; otherwise it serves from CPU.

Errors, all ProtocolErrors with their status:
    ModelTooLarge   507  larger than every memory budget: disk is where it waits, not where it runs
    Overloaded      503  it fits, but what could make room is in use (retry)
    ModelUnavailable 500 the weights or config could not be fetched, verified or loaded
    NotFound        404  neither the repository nor the remote store has it

All methods run on the event loop (release too); blocking work runs in pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Generic, TypeVar

from common.singleflight import SingleFlight
from protocol.errors import ModelTooLarge, ModelUnavailable, NotFound, Overloaded, ProtocolError
from worker.device import Device
from worker.disk_cache import DiskCache, DiskFull
from worker.eviction import make_policy
from worker.leases import Lease, Resident
from worker.memory_config import MemoryConfig
from worker.paging import Key, Pager, describe
from worker.tiers import CPU, DISK, GPU, REMOTE, MemoryObserver, MemorySnapshot, NullObserver, Tier, snapshot_of
from worker.torch_threads import one_torch_thread

log = logging.getLogger(__name__)

M = TypeVar("M")


class MemoryManager(Generic[M]):
    def __init__(
        self,
        config: MemoryConfig,
        pager: Pager[M],
        repository: Callable[[Key], Path | None],
        device: Device | None = None,
        disk_cache: DiskCache | None = None,
        observer: MemoryObserver | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        self.device = device if config.gpu_budget > 0 else None
        self._pager = pager
        self._repository = repository
        self.disk_cache = self._disk = disk_cache
        self._observer = observer or NullObserver()
        self._clock = clock  # measures load costs; waits use the event loop's time
        self._cpu: Tier[Key] = Tier(CPU, config.cpu_budget, make_policy(config.eviction))
        self._gpu: Tier[Key] | None = (
            Tier(GPU, config.gpu_budget, make_policy(config.eviction)) if self.device else None
        )
        self._models: dict[Key, Resident[M]] = {}
        self._flights: SingleFlight[str] = SingleFlight()
        self._waiters: dict[Key, int] = {}  # callers awaiting a page-in: its result is not evictable
        self._paging: set[Key] = set()
        self._pins: set[Key] = set(config.pinned)
        self._sizes: dict[Key, tuple[int, bool]] = {}
        self._failed: dict[Key, str] = {}
        self._room: asyncio.Future[None] | None = None
        self._load_slots = asyncio.Semaphore(config.max_loads)
        self._pool = ThreadPoolExecutor(config.max_loads, "page-in", initializer=one_torch_thread)  # warm-ups run here
        self._header_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="weights-header")
        if disk_cache is not None:
            disk_cache.set_in_use(lambda key: key in self._models or key in self._paging or key in self._pins)

    # -- the request path --------------------------------------------------------

    def try_acquire(self, key: Key) -> Lease[M] | None:
        """A lease on a model already in its serving tier, with no await; None otherwise."""
        resident = self._models.get(key)
        if resident is None or resident.unloading or self._wants_promotion(resident):
            return None
        return self._lease(resident, resident.tier)

    async def acquire(self, key: Key, max_wait: float | None = None) -> Lease[M]:
        """A lease on the model, paged in first when needed (see the module's errors)."""
        lease = self.try_acquire(key)
        if lease is not None:
            return lease
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.config.wait_timeout if max_wait is None else max_wait)
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            while True:
                source, _ = await self._flights.do(key, self._page_in(key, deadline))
                resident = self._models.get(key)
                if resident is not None and not resident.unloading:
                    return self._lease(resident, source)
                if loop.time() >= deadline:  # unloaded again and again while we waited
                    raise Overloaded(f"{describe(key)} was unloaded while loading; try again")
        finally:
            left = self._waiters[key] - 1
            if left:
                self._waiters[key] = left
            else:
                del self._waiters[key]

    def _lease(self, resident: Resident[M], source: str) -> Lease[M]:
        resident.refs += 1
        self._tier(resident.tier).touch(resident.key)
        return Lease(resident, source, self.device if resident.tier == GPU else None, self._release)

    def _release(self, resident: Resident[M]) -> None:
        resident.refs -= 1
        if resident.refs == 0:
            if resident.unloading and self._models.get(resident.key) is resident:
                self._drop(resident)
            self._notify_room()

    def _wants_promotion(self, resident: Resident[M]) -> bool:
        gpu = self._gpu
        return resident.tier == CPU and gpu is not None and resident.device_capable and resident.size <= gpu.budget

    # -- paging in ----------------------------------------------------------------

    async def _page_in(self, key: Key, deadline: float) -> str:
        """Make the model resident; answers where it was (the lease's source)."""
        while (resident := self._models.get(key)) is not None:
            if not resident.unloading:
                source = resident.tier
                if self._wants_promotion(resident):
                    await self._promote(resident)
                return source
            await self._room_changed(key, deadline)  # an unload finishes at its last release
        self._paging.add(key)
        try:
            directory, source = self._locate(key)
            if directory is None:
                if self._disk is None:
                    raise NotFound(f"unknown model '{key[0]}' version {key[1]}")
                directory, source = await self._fetch(self._disk, key, deadline), REMOTE
            size, on_device = await self._measure(key, directory)
            tier = await self._reserve(key, size, deadline, on_device)
            try:
                async with self._load_slots:
                    loop = asyncio.get_running_loop()
                    started = self._clock()
                    host = await loop.run_in_executor(self._pool, self._pager.load, key, directory)
                    host_seconds = self._clock() - started
                    device_copy, device = None, self.device if tier is self._gpu else None
                    if device is not None:
                        to_device = self._pager.to_device
                        device_copy = await loop.run_in_executor(self._pool, to_device, key, host, device)
                    serving = host if device_copy is None else device_copy
                    await loop.run_in_executor(self._pool, self._pager.warm_up, key, serving, device)
                    device_seconds = self._clock() - started - host_seconds
            except BaseException:
                tier.cancel(key)
                self._notify_room()
                raise
            tier.commit(key, host_seconds + device_seconds if tier is self._gpu else host_seconds)
            self._models[key] = Resident(
                key, size, tier.name, host, device_copy, host_seconds, device_seconds, device_capable=on_device
            )
            if self._pager.pinned(host):  # the model's config pins it: again on every load
                self._pins.add(key)
            self._failed.pop(key, None)
            self._observer.loaded(key, source, host_seconds + device_seconds)
            log.info("loaded model %s version %s from %s into %s (%d bytes, %.3fs)", *key, source, tier.name, size,
                     host_seconds + device_seconds)  # fmt: skip
            return source
        except (Overloaded, NotFound):
            raise  # about this moment or this name, not the model
        except ProtocolError as exc:
            self._failed[key] = exc.message
            raise
        except Exception as exc:  # a pager may raise anything; report the kind, keep the manager consistent
            reason = f"{describe(key)} failed to load ({type(exc).__name__})"
            self._failed[key] = reason
            log.exception("load failed: %s", reason)
            raise ModelUnavailable(reason) from exc
        finally:
            self._paging.discard(key)

    async def _fetch(self, disk: DiskCache, key: Key, deadline: float) -> Path:
        """Download into the disk cache. A resident model's file stays on disk while it
        is in memory (the weights are mapped from it), so when only those files could
        make room, idle ones leave memory first, least worth keeping first; when every
        one is in use, wait for a release (Overloaded at the deadline)."""
        while True:
            try:
                return await disk.fetch(key)
            except DiskFull as full:
                if not self._free_disk(disk, full.size):
                    await self._room_changed(key, deadline)

    def _free_disk(self, disk: DiskCache, size: int) -> bool:
        """Drop idle models whose files are in the disk cache from memory, in each tier's
        eviction order, until a download of ``size`` bytes would find room."""
        on_disk = set(disk.held())
        for tier in [t for t in (self._cpu, self._gpu) if t is not None]:
            for key in tier.eviction_order(lambda k: k in on_disk and self._evictable(k)):
                if disk.could_take(size):
                    return True
                resident = self._models.pop(key)
                tier.remove(key, evicted=True)
                self._observer.evicted(key, tier.name)
                resident.device_copy = None
                log.info("evicted model %s version %s from %s: its file must leave the disk cache", *key, resident.tier)
        return disk.could_take(size)

    def _locate(self, key: Key) -> tuple[Path | None, str]:
        directory = self._repository(key)
        if directory is None and self._disk is not None:
            directory = self._disk.path(key)
        return directory, DISK if directory is not None else REMOTE

    async def _measure(self, key: Key, directory: Path) -> tuple[int, bool]:
        """The model's bytes, and whether its format can serve from a device."""
        measured = self._sizes.get(key)
        if measured is None:
            loop = asyncio.get_running_loop()
            size = await loop.run_in_executor(self._header_pool, self._pager.weights_bytes, key, directory)
            capable = await loop.run_in_executor(self._header_pool, self._pager.device_capable, key, directory)
            measured = self._sizes[key] = (size, capable)
        return measured

    async def _reserve(self, key: Key, size: int, deadline: float, on_device: bool = True) -> Tier[Key]:
        """Reserve ``size`` bytes in the best tier that can make room, evicting first."""
        gpu = self._gpu if on_device else None
        tiers = [t for t in (gpu, self._cpu) if t is not None and t.fits_at_all(size)]
        if not tiers:
            largest = max(t.budget for t in (self._gpu, self._cpu) if t is not None)
            raise ModelTooLarge(
                f"{describe(key)} needs {size} bytes of memory, more than any memory budget here "
                f"({largest} bytes): disk is where it waits, not where it runs"
            )
        while True:
            for tier in tiers:
                if self._make_room(tier, size):
                    tier.reserve(key, size)
                    return tier
            await self._room_changed(key, deadline)

    async def _promote(self, resident: Resident[M]) -> None:
        """CPU to GPU, one host-to-device copy; on no room or failure it stays on CPU."""
        gpu, device, key = self._gpu, self.device, resident.key
        assert gpu is not None and device is not None
        if not self._make_room(gpu, resident.size):
            return
        gpu.reserve(key, resident.size)
        resident.promoting = True
        try:
            async with self._load_slots:
                started = self._clock()
                loop = asyncio.get_running_loop()
                copy = await loop.run_in_executor(self._pool, self._pager.to_device, key, resident.host, device)
                await loop.run_in_executor(self._pool, self._pager.warm_up, key, copy, device)
                seconds = self._clock() - started
        except Exception as exc:
            gpu.cancel(key)
            self._notify_room()
            log.warning("promotion to gpu failed, serving from cpu: %s (%s)", describe(key), type(exc).__name__)
            return
        except BaseException:
            gpu.cancel(key)
            raise
        finally:
            resident.promoting = False
        self._cpu.remove(key, evicted=False)
        gpu.commit(key, resident.host_seconds + seconds)
        resident.tier, resident.device_copy, resident.device_seconds = GPU, copy, seconds
        self._observer.loaded(key, CPU, seconds)
        self._notify_room()

    # -- making room ----------------------------------------------------------------

    def _evictable(self, key: Key) -> bool:
        resident = self._models[key]
        return not (resident.refs or resident.promoting or key in self._pins or key in self._waiters)

    def _make_room(self, tier: Tier[Key], size: int) -> bool:
        victims = tier.plan(size, self._evictable)
        if victims is None:
            return False
        for key in victims:
            self._evict(self._models[key], tier)
        return True

    def _evict(self, resident: Resident[M], tier: Tier[Key]) -> None:
        key = resident.key
        tier.remove(key, evicted=True)
        self._observer.evicted(key, tier.name)
        resident.device_copy = None  # the device copy is freed when the last reference goes
        if tier is self._gpu and self._cpu.free >= resident.size:
            self._cpu.add(key, resident.size, resident.host_seconds)
            resident.tier = CPU
            log.info("demoted model %s version %s from gpu to cpu (%d bytes)", *key, resident.size)
            return
        del self._models[key]
        log.info("evicted model %s version %s from %s (%d bytes)", *key, tier.name, resident.size)

    def _drop(self, resident: Resident[M]) -> None:
        self._tier(resident.tier).remove(resident.key, evicted=False)
        del self._models[resident.key]
        resident.device_copy = None

    def _tier(self, name: str) -> Tier[Key]:
        return self._gpu if name == GPU and self._gpu is not None else self._cpu

    def _notify_room(self) -> None:
        if self._room is not None and not self._room.done():
            self._room.set_result(None)
        self._room = None

    async def _room_changed(self, key: Key, deadline: float) -> None:
        """Wait for a release, unload or failed load, or raise Overloaded at the deadline."""
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise Overloaded(f"no room for {describe(key)}: the models that could make room are in use")
        if self._room is None:
            self._room = loop.create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._room), remaining)

    # -- administration -------------------------------------------------------------

    def pin(self, key: Key) -> None:
        """Never evict this model while resident (it still loads on first use).
        A model whose config says ``pinned`` is pinned each time it loads."""
        self._pins.add(key)

    def unpin(self, key: Key) -> None:
        self._pins.discard(key)
        self._notify_room()

    async def unload(self, key: Key) -> bool:
        """Drop a model from memory (a disk-cache copy stays); one in use goes at its
        last release, and new acquires load it afresh. False when it was not resident."""
        if key in self._flights:  # let the page-in in flight finish first
            with contextlib.suppress(Exception):
                await self._flights.do(key, asyncio.sleep(0, ""))
        self._sizes.pop(key, None)
        self._failed.pop(key, None)
        resident = self._models.get(key)
        if resident is None:
            return False
        if resident.refs:
            resident.unloading = True
        else:
            self._drop(resident)
            self._notify_room()
        return True

    def residency(self, key: Key) -> str | None:
        """gpu or cpu while resident, else None."""
        resident = self._models.get(key)
        return resident.tier if resident is not None else None

    def loading(self, key: Key) -> bool:
        return key in self._flights

    def failure(self, key: Key) -> str | None:
        """Why the model's last load failed, until a load succeeds or it is unloaded."""
        return self._failed.get(key)

    def tier_bytes(self) -> dict[tuple[str, ...], float]:
        """(tier, used|budget) -> bytes, for the affinity_memory_bytes gauge."""
        out: dict[tuple[str, ...], float] = {}
        for tier in self.snapshot().tiers:
            out[(tier.tier, "used")], out[(tier.tier, "budget")] = float(tier.used), float(tier.budget)
        return out

    def snapshot(self) -> MemorySnapshot:
        """Each tier's budget, bytes used and reserved, and models (sizes, refs, pins)."""

        def refs(key: Key) -> int:
            return self._models[key].refs

        tiers = [snapshot_of(t, refs, self._pins.__contains__) for t in (self._gpu, self._cpu) if t is not None]
        if self._disk is not None:
            tiers.append(self._disk.snapshot())
        return MemorySnapshot(self.config.eviction, tuple(tiers), self._disk.store.url if self._disk else None)

    async def close(self) -> None:
        await self._flights.cancel_all()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._header_pool.shutdown(wait=True, cancel_futures=True)
        if self._disk is not None:
            await self._disk.close()
