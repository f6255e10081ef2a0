"""The disk tier: a budgeted directory of verified downloads from the remote store.

Layout ``<root>/<name>/<version>/`` (files plus their ``manifest.json``), the
same as a repository, so a cached version loads like a local one. A download
goes to a staging directory inside the root (``.staging-*``: no model name
starts with a dot), each file checked against the manifest as it streams (never
more bytes than declared, then size and sha256), and becomes visible only by
one atomic rename; a failed or partial download is deleted and never listed.
The budget counts the manifest's bytes: the download reserves them first and
makes room by deleting the least valuable cached versions (by the tier's
eviction policy) that are not in use. "In use" is the manager's answer: a
version resident in memory, being paged in, or pinned. When only versions in
use could make room, the download raises ``DiskFull`` (a 503), which the
manager answers by dropping idle models from memory (their files then may go)
or by waiting for a release. Accounting lives on the event loop; file I/O runs
in a pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.singleflight import SingleFlight
from protocol.errors import ModelTooLarge, ModelUnavailable, NotFound, Overloaded
from protocol.names import is_valid_name, is_valid_version
from worker.eviction import EvictionPolicy
from worker.manifest import CHUNK, MANIFEST_FILE, InvalidManifest, Manifest
from worker.remote_store import MissingFromStore, RemoteStore, RemoteStoreError
from worker.tiers import DISK, MemoryObserver, NullObserver, Tier, TierSnapshot, snapshot_of

log = logging.getLogger(__name__)

Key = tuple[str, str]
STAGING = ".staging-"
TRASH = ".trash-"


class CorruptDownload(ModelUnavailable):
    """What arrived does not match the manifest."""


class DiskFull(Overloaded):
    """Room for ``size`` bytes is held by versions in use (resident in memory, loading, pinned)."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class DiskCache:
    def __init__(
        self,
        root: Path,
        budget: int,
        store: RemoteStore,
        policy: EvictionPolicy,
        observer: MemoryObserver | None = None,
        max_downloads: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.store = store
        self._tier: Tier[Key] = Tier(DISK, budget, policy)
        self._observer = observer or NullObserver()
        self._in_use: Callable[[Key], bool] = lambda key: False
        self._flights: SingleFlight[Path] = SingleFlight()
        self._pool = ThreadPoolExecutor(max_workers=max_downloads + 1, thread_name_prefix="disk-cache")
        self._downloads = asyncio.Semaphore(max_downloads)
        self._clock = clock

    @property
    def budget(self) -> int:
        return self._tier.budget

    def set_in_use(self, in_use: Callable[[Key], bool]) -> None:
        """Who may not be deleted: the manager's memory-resident, loading and pinned models."""
        self._in_use = in_use

    def scan(self) -> None:
        """Index what earlier runs left (blocking; call before serving): complete
        versions whose files have the manifest's sizes. Staging leftovers and
        anything incomplete are deleted; so is the excess over a smaller budget."""
        self.root.mkdir(parents=True, exist_ok=True)
        found: list[tuple[float, Key, int]] = []
        for entry in os.scandir(self.root):
            if entry.name.startswith((STAGING, TRASH)):
                _remove(Path(entry.path))
            elif is_valid_name(entry.name) and entry.is_dir():
                for version in os.scandir(entry.path):
                    key = (entry.name, version.name)
                    if version.name.startswith((STAGING, TRASH)):
                        _remove(Path(version.path))
                        continue
                    size = _complete_size(Path(version.path)) if is_valid_version(version.name) else None
                    if size is None:
                        log.warning("disk cache: deleting incomplete entry for model %s", entry.name)
                        _remove(Path(version.path))
                    else:
                        found.append((version.stat().st_mtime, key, size))
        for _, key, size in sorted(found):  # oldest first, so the policy's order starts as LRU
            victims = self._tier.plan(size, lambda k: True)  # nothing is in use yet
            if victims is None:
                _remove(self._path(key))
                continue
            for victim in victims:
                self._tier.remove(victim, evicted=True)
                _remove(self._path(victim))
            self._tier.add(key, size, cost=0.0)

    def could_take(self, size: int) -> bool:
        """Whether a download of ``size`` bytes would find room among versions not in use."""
        return self._tier.plan(size, lambda k: not self._in_use(k)) is not None

    def held(self) -> list[Key]:
        """The cached versions (any order)."""
        return list(self._tier.sizes)

    def path(self, key: Key) -> Path | None:
        """Where a cached version lies, or None (no I/O)."""
        if key in self._tier.sizes:
            self._tier.touch(key)
            return self._path(key)
        return None

    def _path(self, key: Key) -> Path:
        return self.root / key[0] / key[1]

    def __contains__(self, key: Key) -> bool:
        return key in self._tier.sizes

    async def list_remote(self) -> dict[str, list[str]]:
        """Every model name in the remote store with its complete versions, listed in the
        pool; RemoteStoreError when the store cannot be read (keep the last listing then)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.store.list_versions)

    async def fetch(self, key: Key) -> Path:
        """The version's directory in the cache, downloaded and verified first if needed.
        Raises NotFound (404: not in the store), ModelTooLarge (507), Overloaded (503),
        ModelUnavailable (500: the store failed, or what came does not match the manifest)."""
        path = self.path(key)
        if path is not None:
            return path
        result, _ = await self._flights.do(key, self._download(key))
        return result

    async def _download(self, key: Key) -> Path:
        loop = asyncio.get_running_loop()
        where = f"model '{key[0]}' version {key[1]}"
        try:
            manifest = await loop.run_in_executor(self._pool, self.store.read_manifest, key)
        except MissingFromStore:
            raise NotFound(f"unknown model '{key[0]}' version {key[1]}") from None
        except (RemoteStoreError, InvalidManifest) as exc:
            raise ModelUnavailable(f"{where}: {exc}") from None
        size = manifest.total_bytes
        if size > self._tier.budget:
            raise ModelTooLarge(f"{where} needs {size} bytes, more than the disk cache's budget of {self._tier.budget}")
        victims = self._tier.plan(size, lambda k: not self._in_use(k))
        if victims is None:
            raise DiskFull(f"{where}: the disk cache is full of models in use", size)
        doomed = []
        for victim in victims:
            self._tier.remove(victim, evicted=True)
            self._observer.evicted(victim, DISK)
            doomed.append(self._path(victim))
            log.info("disk cache: evicted model %s version %s", *victim)
        self._tier.reserve(key, size)
        try:
            if doomed:
                await loop.run_in_executor(self._pool, _remove_all, doomed)
            async with self._downloads:
                started = self._clock()
                path = await loop.run_in_executor(self._pool, self._fetch_verified, key, manifest)
                seconds = self._clock() - started
        except BaseException:
            self._tier.cancel(key)
            raise
        self._tier.commit(key, seconds)
        log.info("disk cache: downloaded model %s version %s (%d bytes, %.3fs)", key[0], key[1], size, seconds)
        return path

    def _fetch_verified(self, key: Key, manifest: Manifest) -> Path:
        """In the pool: download every file into staging, verify, rename into place."""
        where = f"model '{key[0]}' version {key[1]}"
        staging = self.root / f"{STAGING}{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            for name, expected in manifest.files.items():
                digest = hashlib.sha256()
                received = 0
                try:
                    with self.store.open_file(key, name) as source, open(staging / name, "wb") as out:
                        while chunk := source.read(CHUNK):
                            received += len(chunk)
                            if received > expected.size:
                                raise CorruptDownload(f"{where}: {name} is larger than its manifest says")
                            digest.update(chunk)
                            out.write(chunk)
                        out.flush()
                        os.fsync(out.fileno())
                except RemoteStoreError as exc:
                    raise ModelUnavailable(f"{where}: {exc}") from None
                if received != expected.size:
                    raise CorruptDownload(f"{where}: {name} is shorter than its manifest says")
                if digest.hexdigest() != expected.sha256:
                    raise CorruptDownload(f"{where}: {name} does not match its manifest's sha256")
            (staging / MANIFEST_FILE).write_bytes(manifest.to_bytes())
            final = self._path(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # left by a run that crashed between rename and indexing
                _remove(final)
            os.rename(staging, final)
            _fsync_dir(final.parent)
            return final
        except BaseException:
            _remove(staging)
            raise

    async def discard(self, key: Key) -> bool:
        """Delete a cached version (the store now holds other files under its name), so
        the next use downloads it afresh. A process still mapping the old files keeps
        them until it lets go (the directory is renamed aside, then removed)."""
        if key in self._flights:  # a download in flight finishes first
            with contextlib.suppress(Exception):
                await self._flights.do(key, asyncio.sleep(0, Path()))
        if key not in self._tier.sizes:
            return False
        self._tier.remove(key, evicted=False)
        await asyncio.get_running_loop().run_in_executor(self._pool, _remove, self._path(key))
        log.info("disk cache: discarded model %s version %s (changed in the store)", *key)
        return True

    def snapshot(self) -> TierSnapshot:
        """Cached versions (refs 1: in use, may not be deleted), then downloads in flight."""
        return snapshot_of(self._tier, lambda key: int(self._in_use(key)), lambda key: False)

    async def close(self) -> None:
        await self._flights.cancel_all()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _complete_size(version_dir: Path) -> int | None:
    """The manifest's total when every file it lists is there with its size; None otherwise."""
    try:
        manifest = Manifest.from_bytes((version_dir / MANIFEST_FILE).read_bytes())
        for name, entry in manifest.files.items():
            if (version_dir / name).stat().st_size != entry.size:
                return None
    except (OSError, InvalidManifest):
        return None
    return manifest.total_bytes


def _remove(path: Path) -> None:
    """Delete a directory: renamed aside first (atomic), so it vanishes from view at once."""
    if not path.exists():
        return
    trash = path.parent / f"{TRASH}{uuid.uuid4().hex}"
    try:
        os.rename(path, trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


def _remove_all(paths: list[Path]) -> None:
    for path in paths:
        _remove(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
