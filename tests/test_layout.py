"""The layout contracts of docs/design.md, checked on the code itself."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {"protocol", "balancer", "worker", "cache", "cli", "common", "loadgen", "tests"}


def _imports(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_balancer_and_worker_never_import_each_other() -> None:
    assert "worker" not in _imports("balancer")
    assert "balancer" not in _imports("worker")


def test_protocol_is_wire_formats_only_and_imports_nothing_of_ours() -> None:
    assert _imports("protocol") & OURS <= {"protocol"}


def test_common_imports_only_protocol() -> None:
    assert _imports("common") & OURS <= {"common", "protocol"}


def test_the_balancer_process_never_imports_torch_or_numpy() -> None:
    code = (
        "import sys, cli.main, balancer.app, cache.redis_store\n"
        "cli.main.build_parser()\n"
        "print(sorted(m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_nothing_points_outside_the_repository() -> None:
    """A clone stands on its own: docs and code cite docs/design.md, not notes a clone lacks."""
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    # Spelled in pieces, so that this file does not itself name what it looks for.
    outside = ("../" + "shared", "DES" + "IGN.md", "STY" + "LE.md", "RELIA" + "BILITY.md")
    offenders = []
    for name in tracked.split():
        path = ROOT / name
        checked = path.suffix in (".py", ".md", ".toml", ".yml", ".yaml", ".json")
        if checked and path.is_file():
            text = path.read_text(errors="replace")
            offenders += [f"{name}: {word}" for word in outside if word in text]
    assert not offenders
