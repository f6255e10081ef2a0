"""Putting a user's model into a repository, and taking it out (``affinity models add|remove``).

A version is added whole or not at all: its files are written into a staging
directory beside the model's versions (``.adding-*``, which no scan lists), the
model is loaded from there through the worker's own pager and must pass the
interface check (a synthetic forward that returns the declared outputs), then
``manifest.json`` (sizes and sha256) is written last and the directory is
renamed into place in one step. What would not load is refused and leaves
nothing behind. The weights given are refused unopened when their name or
first bytes say pickle or archive; only a safetensors file (its header checked
against its size) or an ONNX file is ever read. Removing renames a version
aside first, so a scan never sees it half-deleted.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson

from protocol.errors import ModelUnavailable
from protocol.names import is_valid_name, is_valid_version
from worker.custom_code import CodePolicy
from worker.formats import ModelPager
from worker.manifest import Manifest, write_manifest
from worker.model_config import ModelConfig
from worker.paging import warm_up_on
from worker.pickle_guard import RefusedFile, check_file_name, sniff
from worker.repository import CONFIG_FILE
from worker.weights import InvalidWeights, read_weights_info

STAGING = ".adding-"
REMOVING = ".removing-"
SUFFIXES = {"safetensors": ".safetensors", "onnx": ".onnx"}


class AddRefused(ValueError):
    """The model would not load, or its files may not enter a repository."""


@dataclass(frozen=True, slots=True)
class Added:
    name: str
    version: str
    path: Path
    manifest: Manifest


def next_version(root: Path, name: str) -> str:
    model_dir = root / name
    versions = [int(v) for v in os.listdir(model_dir) if is_valid_version(v)] if model_dir.is_dir() else []
    return str(max(versions, default=0) + 1)


def check_weights_file(path: Path, format: str) -> None:
    """AddRefused unless ``path`` may be read as ``format``'s weights (pickles are never read)."""
    if not path.is_file():
        raise AddRefused(f"{path.name}: no such file")
    try:
        check_file_name(path.name)
    except RefusedFile as exc:
        raise AddRefused(str(exc)) from None
    kind = sniff(path)
    if kind is not None:
        raise AddRefused(f"'{path.name}' is {kind}: pickles are never opened here")
    if format == "safetensors":
        try:
            read_weights_info(path)
        except InvalidWeights as exc:
            raise AddRefused(f"'{path.name}' is not a valid safetensors file ({exc})") from None


def add_version(
    root: Path,
    name: str,
    config: ModelConfig,
    weights: Path,
    version: str | None = None,
    allow_code: tuple[str, ...] = (),
) -> Added:
    """Add ``weights`` with ``config`` as a new version of ``name`` (the next one by
    default); AddRefused when it would not load or the version exists."""
    if not is_valid_name(name):
        raise AddRefused(f"'{name[:64]}' is not a model name (letters, digits, _ - . only)")
    version = version or next_version(root, name)
    if not is_valid_version(version):
        raise AddRefused(f"'{version[:16]}' is not a version (a positive integer)")
    final = root / name / version
    if final.exists():
        raise AddRefused(f"model '{name}' version {version} exists already (remove it first, or add another version)")
    check_weights_file(weights, config.format)
    created_model_dir = not (root / name).exists()
    staging = root / name / f"{STAGING}{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        shutil.copyfile(weights, staging / config.weights_file)
        (staging / CONFIG_FILE).write_bytes(orjson.dumps(config.to_json(), option=orjson.OPT_INDENT_2))
        _check_loads(name, version, staging, config, allow_code, root)
        manifest = write_manifest(staging)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_model_dir:
            shutil.rmtree(root / name, ignore_errors=True)
        raise
    return Added(name, version, final, manifest)


def _check_loads(
    name: str, version: str, directory: Path, config: ModelConfig, allow: tuple[str, ...], root: Path
) -> None:
    """Load the staged version as a worker would and run the interface check (always,
    even for a config that turns the warm-up off)."""
    if config.code is not None and not allow:
        allow = (config.code.partition(":")[0].split(".")[0],)  # the operator named this code
    pager = ModelPager(CodePolicy(allow, (root,)))
    key = (name, version)
    try:
        pager.weights_bytes(key, directory)
        warm_up_on(pager.load(key, directory), None)
    except ModelUnavailable as exc:
        raise AddRefused(exc.message.replace(f"model '{name}' version {version}: ", "", 1)) from None


def remove_versions(root: Path, name: str, version: str | None = None) -> list[str]:
    """Remove one version of ``name``, or all of them; the versions removed."""
    if not is_valid_name(name) or not (root / name).is_dir():
        raise AddRefused(f"no model '{name[:64]}' in {root}")
    model_dir = root / name
    versions = [version] if version is not None else sorted((v for v in os.listdir(model_dir) if is_valid_version(v)),
                                                               key=int)  # fmt: skip
    removed = []
    for v in versions:
        if not is_valid_version(v) or not (model_dir / v).is_dir():
            raise AddRefused(f"model '{name}' has no version '{v[:16]}'")
        aside = model_dir / f"{REMOVING}{uuid.uuid4().hex}"
        os.rename(model_dir / v, aside)
        shutil.rmtree(aside)
        removed.append(v)
    if not any(is_valid_version(v) for v in os.listdir(model_dir)):
        shutil.rmtree(model_dir)
    return removed
