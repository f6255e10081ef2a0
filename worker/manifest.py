"""A model version's ``manifest.json``: each file's size and sha256.

    {"files": {"model.safetensors": {"size": 1048576, "sha256": "9f86d0..."},
               "config.json":       {"size": 412,     "sha256": "60303a..."}}}

A remote store holds one beside each version's files; a download is checked
against it before it becomes visible. The manifest is written (and uploaded)
last, so its presence marks a complete version. File names are plain names in
the version's directory, never paths.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

MANIFEST_FILE = "manifest.json"
REQUIRED_FILES = ("config.json",)
MAX_MANIFEST_BYTES = 1 << 20
CHUNK = 1 << 20

_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class InvalidManifest(ValueError):
    """A manifest.json that cannot be trusted to describe a version."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    files: dict[str, FileEntry]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_json(self) -> dict[str, Any]:
        return {"files": {name: {"size": f.size, "sha256": f.sha256} for name, f in sorted(self.files.items())}}

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json(), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        if len(data) > MAX_MANIFEST_BYTES:
            raise InvalidManifest("manifest.json is too large")
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise InvalidManifest("manifest.json is not valid JSON") from None
        files = raw.get("files") if isinstance(raw, dict) else None
        if not isinstance(files, dict) or not files:
            raise InvalidManifest("manifest.json needs a non-empty 'files' object")
        entries = {}
        for name, entry in files.items():
            if not is_valid_file_name(name) or name == MANIFEST_FILE:
                raise InvalidManifest("manifest.json names a file that is not a plain file name")
            size = entry.get("size") if isinstance(entry, dict) else None
            digest = entry.get("sha256") if isinstance(entry, dict) else None
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidManifest(f"manifest.json: bad size for {name}")
            if not isinstance(digest, str) or _SHA256.fullmatch(digest) is None:
                raise InvalidManifest(f"manifest.json: bad sha256 for {name}")
            entries[name] = FileEntry(size, digest)
        missing = [name for name in REQUIRED_FILES if name not in entries]
        if missing:
            raise InvalidManifest(f"manifest.json does not list {', '.join(missing)}")
        return cls(entries)


def is_valid_file_name(name: str) -> bool:
    return _FILE_NAME.fullmatch(name) is not None and ".." not in name


def hash_file(path: Path) -> FileEntry:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileEntry(size, digest.hexdigest())


def build_manifest(version_dir: Path, names: Iterable[str] | None = None) -> Manifest:
    """A manifest of ``names`` in ``version_dir`` (default: every plainly named file but the manifest)."""
    if names is None:
        names = sorted(
            p.name
            for p in version_dir.iterdir()
            if p.is_file() and p.name != MANIFEST_FILE and is_valid_file_name(p.name)
        )
    return Manifest({name: hash_file(version_dir / name) for name in names})


def write_manifest(version_dir: Path) -> Manifest:
    """Hash a repository entry's files and write its ``manifest.json`` atomically."""
    manifest = build_manifest(version_dir)
    Manifest.from_bytes(manifest.to_bytes())  # the same checks a reader applies
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=version_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(manifest.to_bytes())
        os.replace(tmp, version_dir / MANIFEST_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return manifest
