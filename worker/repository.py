"""The model repository on disk: ``<root>/<name>/<version>/`` with
``config.json`` and its format's weights file (``model.safetensors`` or
``model.onnx``).

The root is a read-only source. Scanning reads directory listings and config
files (no torch), and the sha256 of each version's weights file, which names
the weights in cache keys; a version that carries a pickle or an archive is
listed UNAVAILABLE with the reason (``worker.pickle_guard``); digests are kept by (size, mtime), so a rescan
hashes only files that changed. Scanning blocks: callers run it off the event
loop. Names and versions that break the allow-list rule are skipped, so no
request can name a path outside the root.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import ModelNotFound, VersionNotFound
from protocol.names import is_valid_name, is_valid_version
from worker.errors import InvalidModelConfig
from worker.manifest import MANIFEST_FILE
from worker.model_config import WEIGHTS_FILES, ModelConfig
from worker.pickle_guard import RefusedFile, refuse_pickles

log = logging.getLogger(__name__)

WEIGHTS_FILE = WEIGHTS_FILES["safetensors"]
CONFIG_FILE = "config.json"


@dataclass(slots=True, frozen=True)
class ModelVersion:
    name: str
    version: str
    path: Path | None  # None: the version waits in the remote store
    config: ModelConfig | None  # None when config.json is unusable
    problem: str = ""  # why the version cannot be served, when it cannot
    size_bytes: int = 0
    sha256: str = ""  # of the weights file

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)


def resolve_version(
    models: dict[str, dict[str, ModelVersion]], latest: dict[str, ModelVersion], name: str, version: str | None
) -> ModelVersion:
    """In a view (name -> version -> entry, and each name's latest): the named version,
    or the latest when none is named; ModelNotFound or VersionNotFound otherwise."""
    if version is None:
        found = latest.get(name)
        if found is None:
            raise ModelNotFound(name)
        return found
    versions = models.get(name)
    if not versions:
        raise ModelNotFound(name)
    entry = versions.get(version)
    if entry is None:
        raise VersionNotFound(name, version)
    return entry


class Repository:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._models: dict[str, dict[str, ModelVersion]] = {}
        self._latest: dict[str, ModelVersion] = {}
        self._digests: dict[Path, tuple[int, int, str]] = {}  # path -> (size, mtime_ns, sha256)

    def scan(self) -> None:
        """Re-read the root; the new view replaces the old one whole."""
        models: dict[str, dict[str, ModelVersion]] = {}
        try:
            names = sorted(os.listdir(self.root))
        except OSError as exc:
            log.error("cannot read model repository: %s", exc.strerror)
            names = []
        for name in names:
            model_dir = self.root / name
            if not is_valid_name(name) or not model_dir.is_dir():
                continue
            versions = {}
            for version in os.listdir(model_dir):
                if is_valid_version(version) and (model_dir / version).is_dir():
                    versions[version] = self._read_version(name, version, model_dir / version)
            if versions:
                models[name] = versions
        self._models = models
        self._latest = {name: versions[max(versions, key=int)] for name, versions in models.items()}

    def _read_version(self, name: str, version: str, path: Path) -> ModelVersion:
        try:
            refuse_pickles(path, (CONFIG_FILE, MANIFEST_FILE, *WEIGHTS_FILES.values()))
            config = ModelConfig.from_bytes((path / CONFIG_FILE).read_bytes())
            weights = path / config.weights_file
            stat = weights.stat()
            digest = self._digest(weights, stat.st_size, stat.st_mtime_ns)
        except FileNotFoundError as exc:
            missing = Path(exc.filename or "").name or "a file"
            return ModelVersion(name, version, path, None, f"{missing} is missing")
        except (InvalidModelConfig, RefusedFile) as exc:
            return ModelVersion(name, version, path, None, str(exc))
        except OSError:
            return ModelVersion(name, version, path, None, "the model's files cannot be read")
        return ModelVersion(name, version, path, config, "", stat.st_size, digest)

    def _digest(self, path: Path, size: int, mtime_ns: int) -> str:
        known = self._digests.get(path)
        if known is not None and known[:2] == (size, mtime_ns):
            return known[2]
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        self._digests[path] = (size, mtime_ns, digest)
        return digest

    def has(self, name: str) -> bool:
        return name in self._models

    def versions(self, name: str) -> list[ModelVersion]:
        return sorted(self._models.get(name, {}).values(), key=lambda v: int(v.version))

    def resolve(self, name: str, version: str | None = None) -> ModelVersion:
        """The named version, or the latest when none is named; NotFound otherwise."""
        return resolve_version(self._models, self._latest, name, version)

    def all_versions(self) -> list[ModelVersion]:
        return [v for name in self._models for v in self.versions(name)]

    @property
    def models(self) -> dict[str, dict[str, ModelVersion]]:
        """The last scan's view, name -> version -> entry (replaced whole by each scan)."""
        return self._models
