"""Publish a model repository to a remote store (``affinity models push``).

Every ``<root>/<name>/<version>/`` goes to ``<prefix>/<name>/<version>/`` with a
``manifest.json`` of its files (``worker.manifest``). The manifest marks a
complete version, so it is written last; a version the store already holds
with the same manifest is left alone, and one whose files changed loses its old
manifest first, so no reader ever pairs new files with an old manifest (a
worker's disk cache would reject the download anyway: the sha256 would not
match). The same code fills MinIO in the docker-compose cluster and moto's
server in the tests.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from protocol.names import is_valid_name, is_valid_version
from worker.manifest import MANIFEST_FILE, InvalidManifest, Manifest, build_manifest

Key = tuple[str, str]


class PublishError(Exception):
    """The store could not be written (the message names no credentials)."""


@dataclass(frozen=True, slots=True)
class Published:
    name: str
    version: str
    bytes: int
    uploaded: bool  # False: the store already held this version with the same manifest


class StoreWriter(Protocol):
    url: str

    def manifest(self, key: Key) -> Manifest | None:
        """The store's manifest for a version, None when it has none (or an unreadable one)."""
        ...

    def put(self, key: Key, file: str, source: Path) -> None: ...

    def delete(self, key: Key, file: str) -> None: ...


def versions(root: Path) -> Iterator[tuple[Key, Path]]:
    """Every ``(name, version)`` directory of a repository, in name and version order."""
    if not root.is_dir():
        raise ValueError(f"model repository {root} is not a directory")
    for name_dir in sorted(p for p in root.iterdir() if p.is_dir() and is_valid_name(p.name)):
        for version_dir in sorted(
            (p for p in name_dir.iterdir() if p.is_dir() and is_valid_version(p.name)), key=lambda p: int(p.name)
        ):
            if (version_dir / "config.json").is_file():
                yield (name_dir.name, version_dir.name), version_dir


def publish(root: Path, store: StoreWriter) -> list[Published]:
    """Upload every version of ``root`` that the store does not hold as it is here."""
    done = []
    for key, directory in versions(root):
        manifest = build_manifest(directory)
        held = store.manifest(key)
        if held is not None and held.to_json() == manifest.to_json():
            done.append(Published(*key, manifest.total_bytes, uploaded=False))
            continue
        if held is not None:
            store.delete(key, MANIFEST_FILE)
        for file in sorted(manifest.files):
            store.put(key, file, directory / file)
        with tempfile.TemporaryDirectory(prefix="affinity-manifest-") as tmp:
            path = Path(tmp) / MANIFEST_FILE
            path.write_bytes(manifest.to_bytes())
            store.put(key, MANIFEST_FILE, path)
        done.append(Published(*key, manifest.total_bytes, uploaded=True))
    return done


class DirectoryWriter:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    def manifest(self, key: Key) -> Manifest | None:
        try:
            return Manifest.from_bytes((self.root / key[0] / key[1] / MANIFEST_FILE).read_bytes())
        except (OSError, InvalidManifest):
            return None

    def put(self, key: Key, file: str, source: Path) -> None:
        target = self.root / key[0] / key[1]
        target.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{file}-", dir=target)
        os.close(fd)
        try:
            shutil.copyfile(source, tmp)
            os.replace(tmp, target / file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, key: Key, file: str) -> None:
        (self.root / key[0] / key[1] / file).unlink(missing_ok=True)


class S3Writer:
    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None) -> None:
        import boto3
        from boto3.exceptions import Boto3Error
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
        self._client: Any = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)
        self._errors: tuple[type[Exception], ...] = (BotoCoreError, ClientError, Boto3Error, OSError)
        self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        """Create the bucket when the store says it does not exist (a fresh MinIO); a bucket
        this identity may not inspect (403) is left to the uploads to judge."""
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                return
        except self._errors as exc:
            raise PublishError(f"store {self.url} could not be reached ({type(exc).__name__})") from None
        try:
            self._client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise PublishError(f"bucket {self.bucket} could not be created (ClientError)") from None
        except self._errors as exc:
            raise PublishError(f"bucket {self.bucket} could not be created ({type(exc).__name__})") from None

    def _key(self, key: Key, file: str) -> str:
        return "/".join(p for p in (self.prefix, key[0], key[1], file) if p)

    def manifest(self, key: Key) -> Manifest | None:
        from botocore.exceptions import ClientError

        try:
            body = self._client.get_object(Bucket=self.bucket, Key=self._key(key, MANIFEST_FILE))["Body"]
            with body:
                return Manifest.from_bytes(body.read())
        except InvalidManifest:
            return None
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise PublishError(f"the manifest of {key[0]} version {key[1]} could not be read (ClientError)") from None
        except self._errors as exc:
            what = f"the manifest of {key[0]} version {key[1]}"
            raise PublishError(f"{what} could not be read ({type(exc).__name__})") from None

    def put(self, key: Key, file: str, source: Path) -> None:
        try:
            self._client.upload_file(str(source), self.bucket, self._key(key, file))
        except self._errors as exc:  # boto3's transfer wraps botocore's errors in its own (Boto3Error)
            what = f"{file} of {key[0]} version {key[1]}"
            raise PublishError(f"{what} could not be uploaded ({type(exc).__name__})") from None

    def delete(self, key: Key, file: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key, file))
        except self._errors as exc:
            what = f"{file} of {key[0]} version {key[1]}"
            raise PublishError(f"{what} could not be deleted ({type(exc).__name__})") from None


def open_writer(url: str, endpoint_url: str | None = None) -> StoreWriter:
    """A writer for ``s3://bucket/prefix`` or ``file:///dir``; ValueError otherwise."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError("an s3:// store needs a bucket: s3://bucket/prefix")
        return S3Writer(parsed.netloc, parsed.path, endpoint_url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path:
            raise ValueError("a file:// store needs an absolute path: file:///dir")
        if endpoint_url:
            raise ValueError("an endpoint URL only applies to s3:// stores")
        return DirectoryWriter(Path(parsed.path))
    raise ValueError(f"unsupported remote store {url!r}: use s3://bucket/prefix or file:///dir")
