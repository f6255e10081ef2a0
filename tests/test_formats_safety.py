"""The user's own models, in process: what must never load. A pickle or archive in a
model's version is refused without being opened by any unpickler; model code runs only
from packages the operator allowed, and is refused before it is imported otherwise."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli.up import UpOptions
from protocol.errors import ModelUnavailable
from tests import formats_fixtures as ff
from worker.custom_code import CodePolicy, package_allowed, parse_allowed
from worker.pickle_guard import RefusedFile, refuse_pickles

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _custom_models_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ff.TESTS))


# -- pickles and archives -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "data"),
    [
        ("model.pt", b"anything"),  # by name: never read
        ("pytorch_model.bin", b"anything"),
        ("model.pt2", b"anything"),
        ("weights.ckpt", b"anything"),
        ("dump.joblib", b"anything"),
        ("array.npy", b"anything"),
        ("weights.data", b"\x80\x04\x95 a pickle by its first bytes"),
        ("weights.data", b"PK\x03\x04 a zip by its first bytes"),
        ("weights.data", b"\x93NUMPY by its first bytes"),
    ],
)
def test_a_version_carrying_a_pickle_or_archive_is_refused(tmp_path: Path, file: str, data: bytes) -> None:
    (tmp_path / "config.json").write_bytes(b"{}")
    (tmp_path / file).write_bytes(data)
    with pytest.raises(RefusedFile, match="never opened"):
        refuse_pickles(tmp_path, ("config.json",))


def test_nested_files_are_checked_and_the_parsed_files_are_not_sniffed(tmp_path: Path) -> None:
    # A safetensors header length can start with the bytes of a pickle marker: its own parser judges it.
    (tmp_path / "model.safetensors").write_bytes(b"\x80\x02" + bytes(6))
    (tmp_path / "README.md").write_text("my model")
    refuse_pickles(tmp_path, ("model.safetensors",))
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "model.pt").write_bytes(b"x")
    with pytest.raises(RefusedFile, match=r"model\.pt"):
        refuse_pickles(tmp_path, ("model.safetensors",))


def test_nothing_in_the_worker_calls_an_unpickler() -> None:
    """Static: no torch.load, torch.export.load, pickle, joblib or np.load anywhere in worker/."""
    banned = {("torch", "load"), ("export", "load"), ("pickle", "load"), ("pickle", "loads"), ("np", "load"),
              ("numpy", "load"), ("joblib", "load"), ("dill", "load")}  # fmt: skip
    found = []
    for path in (ROOT / "worker").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, (ast.Name, ast.Attribute)):
                owner = node.value.id if isinstance(node.value, ast.Name) else node.value.attr
                if (owner, node.attr) in banned:
                    found.append(f"{path.name}:{node.lineno} {owner}.{node.attr}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                found += [f"{path.name}: imports {n}" for n in names if n and n.split(".")[0] in ("pickle", "joblib")]
    assert not found


# -- the code allow-list ----------------------------------------------------------------------


@given(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), st.from_regex(r"[a-z0-9_]{1,8}", fullmatch=True))
def test_packages_match_by_whole_name(package: str, suffix: str) -> None:
    assert package_allowed(package, [package])
    assert package_allowed(f"{package}.models.nets", [package])
    assert not package_allowed(f"{package}{suffix}", [package])  # acme does not allow acme_evil
    assert not package_allowed(f"{package}{suffix}.models", [package])
    assert not package_allowed(package, [f"{package}.models"])  # allowing a subpackage allows not its parent


def test_allow_code_takes_package_names_only() -> None:
    assert parse_allowed("acme, beta.models,acme") == ("acme", "beta.models")
    for bad in ("../evil", "acme/models", "acme-models", "acme.", "1acme"):
        with pytest.raises(ValueError, match="not a Python package name"):
            parse_allowed(bad)


def test_code_not_allowed_is_refused_and_never_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "imported"
    monkeypatch.setenv("EVIL_IMPORT_MARKER", str(marker))
    with pytest.raises(ModelUnavailable, match=r"does not allow .*--allow-code"):
        ff.ALLOWED.factory("m", "custom_models_evil:build")
    with pytest.raises(ModelUnavailable, match="does not allow"):
        CodePolicy().factory("m", "custom_models.nets:build")  # off by default
    assert "custom_models_evil" not in sys.modules and not marker.exists()


def test_code_inside_a_data_directory_is_refused_before_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    planted = repo / "planted_units"
    planted.mkdir(parents=True)
    marker = tmp_path / "ran"
    (planted / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef build(): pass\n")
    monkeypatch.syspath_prepend(str(repo))
    policy = CodePolicy(("planted_units",), (repo,))
    with pytest.raises(ModelUnavailable, match="inside a model repository"):
        policy.factory("m", "planted_units:build")
    assert not marker.exists() and "planted_units" not in sys.modules


def test_a_factory_must_exist_and_make_a_module() -> None:
    with pytest.raises(ModelUnavailable, match="has no factory 'nope'"):
        ff.ALLOWED.factory("m", "custom_models.nets:nope")
    with pytest.raises(ModelUnavailable, match=r"no module named 'custom_models\.absent'"):
        ff.ALLOWED.factory("m", "custom_models.absent:build")


def test_up_hands_allow_code_to_every_worker() -> None:
    options = UpOptions(allow_code=("acme", "beta"))
    assert options.memory_args(0)[-2:] == ["--allow-code", "acme,beta"]
    assert "--allow-code" not in UpOptions().memory_args(0)
