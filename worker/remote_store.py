"""Where models wait when no local disk holds them: an S3 bucket or a directory.

Layout, the same in both: ``<prefix>/<name>/<version>/`` holding
``model.safetensors``, ``config.json`` and ``manifest.json`` (sizes and sha256
of the others; see ``worker.manifest``). A version counts as present once its
manifest is there, so uploaders write it last. Stores only list and stream
files; checking what arrives against the manifest is the disk cache's job, in
one place for every store. Every method blocks: callers run them in a pool.

    s3://bucket/prefix   boto3, any endpoint (``endpoint_url``: MinIO, moto...);
                         credentials from boto3's usual environment
    file:///dir          a plain directory
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlparse

from protocol.names import is_valid_name, is_valid_version
from worker.manifest import MANIFEST_FILE, Manifest, is_valid_file_name

Key = tuple[str, str]


class RemoteStoreError(Exception):
    """The store could not be read (the message names no credentials or paths)."""


class MissingFromStore(RemoteStoreError):
    """The store answered, and it does not hold that file."""


class RemoteStore(Protocol):
    url: str  # for display: bucket and prefix, or the directory

    def list_versions(self) -> dict[str, list[str]]:
        """Every model name with its complete versions (those with a manifest)."""
        ...

    def read_manifest(self, key: Key) -> Manifest: ...

    def open_file(self, key: Key, file: str) -> Any:
        """A context manager yielding a binary stream of one file of a version."""
        ...


def _key_parts(key: Key, file: str) -> tuple[str, str, str]:
    name, version = key
    if not is_valid_name(name) or not is_valid_version(version) or not is_valid_file_name(file):
        raise RemoteStoreError("invalid model name, version or file name")
    return name, version, file


class DirectoryStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    def list_versions(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        try:
            names = sorted(os.listdir(self.root))
        except OSError as exc:
            raise RemoteStoreError(f"store directory could not be listed ({exc.strerror})") from None
        for name in names:
            if not is_valid_name(name) or not (self.root / name).is_dir():
                continue
            versions = [
                v
                for v in os.listdir(self.root / name)
                if is_valid_version(v) and (self.root / name / v / MANIFEST_FILE).is_file()
            ]
            if versions:
                found[name] = sorted(versions, key=int)
        return found

    def read_manifest(self, key: Key) -> Manifest:
        with self.open_file(key, MANIFEST_FILE) as f:
            return Manifest.from_bytes(f.read())

    @contextmanager
    def open_file(self, key: Key, file: str) -> Iterator[BinaryIO]:
        name, version, file = _key_parts(key, file)
        try:
            f = open(self.root / name / version / file, "rb")  # noqa: SIM115 (yielded, closed below)
        except FileNotFoundError:
            raise MissingFromStore(f"{file} of model '{name}' version {version} is not in the store") from None
        except OSError as exc:
            raise RemoteStoreError(
                f"{file} of model '{name}' version {version} could not be read ({exc.strerror})"
            ) from None
        with f:
            yield f


class S3Store:
    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, client: Any = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        # Every call that crosses the network has a timeout; botocore retries transient errors.
        config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
        self._client = client or boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)

    def _object_key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def list_versions(self) -> dict[str, list[str]]:
        from botocore.exceptions import BotoCoreError, ClientError

        found: dict[str, set[str]] = {}
        base = self._object_key() + "/" if self.prefix else ""
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base)
            for page in pages:
                for obj in page.get("Contents", ()):
                    parts = obj["Key"][len(base) :].split("/")
                    if (
                        len(parts) == 3
                        and parts[2] == MANIFEST_FILE
                        and is_valid_name(parts[0])
                        and is_valid_version(parts[1])
                    ):
                        found.setdefault(parts[0], set()).add(parts[1])
        except (BotoCoreError, ClientError) as exc:
            raise RemoteStoreError(f"store {self.url} could not be listed ({type(exc).__name__})") from None
        return {name: sorted(versions, key=int) for name, versions in sorted(found.items())}

    def read_manifest(self, key: Key) -> Manifest:
        with self.open_file(key, MANIFEST_FILE) as f:
            return Manifest.from_bytes(f.read())

    @contextmanager
    def open_file(self, key: Key, file: str) -> Iterator[Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        name, version, file = _key_parts(key, file)
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=self._object_key(name, version, file))["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise MissingFromStore(f"{file} of model '{name}' version {version} is not in the store") from None
            raise RemoteStoreError(
                f"{file} of model '{name}' version {version} could not be fetched (ClientError)"
            ) from None
        except BotoCoreError as exc:
            raise RemoteStoreError(
                f"{file} of model '{name}' version {version} could not be fetched ({type(exc).__name__})"
            ) from None
        try:
            yield body
        finally:
            body.close()


def open_store(url: str, endpoint_url: str | None = None) -> RemoteStore:
    """A store from ``s3://bucket/prefix`` or ``file:///dir``; ValueError otherwise."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError("an s3:// store needs a bucket: s3://bucket/prefix")
        return S3Store(parsed.netloc, parsed.path, endpoint_url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path:
            raise ValueError("a file:// store needs an absolute path: file:///dir")
        if endpoint_url:
            raise ValueError("an endpoint URL only applies to s3:// stores")
        return DirectoryStore(Path(parsed.path))
    raise ValueError(f"unsupported remote store {url!r}: use s3://bucket/prefix or file:///dir")
