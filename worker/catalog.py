"""What this worker can serve: the local repository and the remote store, as one view.

The view is what the index, metadata and request validation read, so it is
answered from memory: ``scan`` builds a new one off the event loop (the local
repository's listings, configs and weight digests; the store's listing, and
for each remote version its ``config.json`` and ``manifest.json``), and
``install`` swaps it in on the loop, naming the versions whose weights changed
or that left, so the caller can drop them from memory. A remote version's
files are read once and kept; an explicit load of a name reads them again
(``scan(refresh={name})``). When the store cannot be listed, its last listing
stays. A version in both places is served from the local repository, which is
read-only and never evicted from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from worker.errors import InvalidModelConfig
from worker.manifest import InvalidManifest
from worker.model_config import ModelConfig
from worker.pickle_guard import RefusedFile, check_file_name
from worker.remote_store import RemoteStore, RemoteStoreError
from worker.repository import CONFIG_FILE, ModelVersion, Repository, resolve_version

log = logging.getLogger(__name__)

Key = tuple[str, str]
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class CatalogView:
    models: dict[str, dict[str, ModelVersion]] = field(default_factory=dict)
    latest: dict[str, ModelVersion] = field(default_factory=dict)

    @classmethod
    def of(cls, models: dict[str, dict[str, ModelVersion]]) -> CatalogView:
        return cls(models, {name: versions[max(versions, key=int)] for name, versions in models.items()})

    def get(self, key: Key) -> ModelVersion | None:
        return self.models.get(key[0], {}).get(key[1])


class Catalog:
    def __init__(self, root: Path | None, store: RemoteStore | None = None) -> None:
        self._local = Repository(root) if root is not None else None
        self._store = store
        self._listing: dict[str, list[str]] = {}
        self._remote: dict[Key, ModelVersion] = {}  # read from the store, kept across scans
        self.view = CatalogView()
        self.store_error: str | None = None  # why the last listing failed, if it did

    # -- scanning (blocking: run off the event loop, one scan at a time) -----------

    def scan(self, refresh: frozenset[str] = frozenset()) -> CatalogView:
        """A fresh view (not installed); ``refresh`` names whose remote files are read again."""
        models: dict[str, dict[str, ModelVersion]] = {}
        if self._store is not None:
            for (name, _), entry in self._scan_remote(refresh).items():
                models.setdefault(name, {})[entry.version] = entry
        if self._local is not None:
            self._local.scan()
            for name, versions in self._local.models.items():
                models.setdefault(name, {}).update(versions)  # local wins over remote
        return CatalogView.of(models)

    def _scan_remote(self, refresh: frozenset[str]) -> dict[Key, ModelVersion]:
        assert self._store is not None
        try:
            self._listing = self._store.list_versions()
            self.store_error = None
        except RemoteStoreError as exc:
            if self.store_error is None:
                log.warning("remote store could not be listed, keeping its last listing: %s", exc)
            self.store_error = str(exc)
        listed = {(name, v) for name, versions in self._listing.items() for v in versions}
        self._remote = {k: e for k, e in self._remote.items() if k in listed and k[0] not in refresh}
        for key in sorted(listed - self._remote.keys()):
            self._remote[key] = self._read_remote(key)
        return dict(self._remote)

    def _read_remote(self, key: Key) -> ModelVersion:
        """A remote version's entry from its config.json and manifest.json (two small reads)."""
        assert self._store is not None
        name, version = key
        try:
            manifest = self._store.read_manifest(key)
            for file in manifest.files:  # never downloaded: the version is refused whole
                check_file_name(file)
            with self._store.open_file(key, CONFIG_FILE) as f:
                raw = f.read(MAX_CONFIG_BYTES + 1)
            if len(raw) > MAX_CONFIG_BYTES:
                raise InvalidModelConfig("config.json is too large")
            config = ModelConfig.from_bytes(raw)
        except (RemoteStoreError, InvalidManifest, InvalidModelConfig, RefusedFile) as exc:
            return ModelVersion(name, version, None, None, f"in the remote store: {exc}")
        weights = manifest.files.get(config.weights_file)
        if weights is None:
            problem = f"the remote store's manifest lists no {config.weights_file}"
            return ModelVersion(name, version, None, None, problem)
        return ModelVersion(name, version, None, config, "", weights.size, weights.sha256)

    # -- the installed view (event loop) ---------------------------------------------

    def install(self, view: CatalogView) -> list[Key]:
        """Make ``view`` current; the versions whose weights changed or that are gone."""
        old, self.view = self.view, view
        changed = []
        for name, versions in old.models.items():
            for version, entry in versions.items():
                now = view.get((name, version))
                if now is None or now.sha256 != entry.sha256 or (now.path is None) != (entry.path is None):
                    changed.append((name, version))
        return changed

    def resolve(self, name: str, version: str | None = None) -> ModelVersion:
        """The named version, or the latest when none is named; NotFound otherwise."""
        view = self.view
        return resolve_version(view.models, view.latest, name, version)

    def has(self, name: str) -> bool:
        return name in self.view.models

    def versions(self, name: str) -> list[ModelVersion]:
        return sorted(self.view.models.get(name, {}).values(), key=lambda v: int(v.version))

    def all_versions(self) -> list[ModelVersion]:
        return [v for name in sorted(self.view.models) for v in self.versions(name)]

    def local_path(self, key: Key) -> Path | None:
        """The version's directory in the local repository; None when it waits in the store."""
        entry = self.view.get(key)
        return entry.path if entry is not None else None
