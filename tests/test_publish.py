"""``affinity models push`` into a directory store: what a worker's store then lists,
manifests last, unchanged versions left alone, changed ones replaced whole."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from worker.manifest import MANIFEST_FILE, build_manifest
from worker.publish import DirectoryWriter, Published, open_writer, publish, versions
from worker.remote_store import DirectoryStore


@pytest.fixture
def repository(zoo: Path, tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for name in ("mlp-00", "logreg-03"):
        shutil.copytree(zoo / name / "1", root / name / "1")
    shutil.copytree(zoo / "cnn-01" / "1", root / "mlp-00" / "2")
    (root / "not a model").mkdir()  # not a valid name: skipped
    (root / "mlp-00" / "latest").mkdir()  # not a version: skipped
    return root


def test_versions_are_found_in_name_and_version_order(repository: Path) -> None:
    assert [key for key, _ in versions(repository)] == [("logreg-03", "1"), ("mlp-00", "1"), ("mlp-00", "2")]
    with pytest.raises(ValueError, match="not a directory"):
        list(versions(repository / "missing"))


def test_push_writes_what_the_store_reads_then_skips_what_is_unchanged(repository: Path, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    done = publish(repository, DirectoryWriter(store_dir))
    assert [(p.name, p.version, p.uploaded) for p in done] == [
        ("logreg-03", "1", True),
        ("mlp-00", "1", True),
        ("mlp-00", "2", True),
    ]
    store = DirectoryStore(store_dir)
    assert store.list_versions() == {"logreg-03": ["1"], "mlp-00": ["1", "2"]}
    for (name, version), directory in versions(repository):
        manifest = store.read_manifest((name, version))
        assert manifest == build_manifest(directory)
        for file in manifest.files:
            assert (store_dir / name / version / file).read_bytes() == (directory / file).read_bytes()
    assert all(not p.uploaded for p in publish(repository, DirectoryWriter(store_dir)))


def test_a_changed_version_loses_its_old_manifest_before_its_files_change(repository: Path, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    publish(repository, DirectoryWriter(store_dir))
    weights = repository / "mlp-00" / "1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x00")

    class Watching(DirectoryWriter):
        """Records, at each write, whether the version's manifest was present."""

        def __init__(self, root: Path) -> None:
            super().__init__(root)
            self.log: list[tuple[str, bool]] = []

        def put(self, key: tuple[str, str], file: str, source: Path) -> None:
            self.log.append((file, (self.root / key[0] / key[1] / MANIFEST_FILE).exists()))
            super().put(key, file, source)

    writer = Watching(store_dir)
    done = publish(repository, writer)
    assert [p for p in done if p.uploaded] == [Published("mlp-00", "1", done[1].bytes, uploaded=True)]
    assert writer.log[-1] == (MANIFEST_FILE, False), "the manifest comes last"
    assert all(not present for _, present in writer.log), "no file replaced under the old manifest"
    assert DirectoryStore(store_dir).read_manifest(("mlp-00", "1")) == build_manifest(repository / "mlp-00" / "1")


def test_store_urls_are_checked() -> None:
    with pytest.raises(ValueError, match="bucket"):
        open_writer("s3:///prefix")
    with pytest.raises(ValueError, match="endpoint"):
        open_writer("file:///tmp/x", "http://127.0.0.1:9000")
    with pytest.raises(ValueError, match="unsupported"):
        open_writer("gs://bucket/models")


def test_the_command_pushes_and_reports(repository: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "cli", "models", "push", "--models", str(repository)]
    first = subprocess.run(
        [*cmd, "--remote-store", store.as_uri()], capture_output=True, text=True, timeout=120, check=False
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-1] == f"3 versions in {store.as_uri()}: 3 uploaded, 0 unchanged"
    bad = subprocess.run(
        [*cmd, "--remote-store", "ftp://x/y"], capture_output=True, text=True, timeout=120, check=False
    )
    assert bad.returncode == 2 and "unsupported remote store" in bad.stderr
