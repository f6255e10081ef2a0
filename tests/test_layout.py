"""DESIGN.md's layout contracts, checked on the code itself."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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


def test_common_imports_no_part() -> None:
    assert not _imports("common") & {"balancer", "worker", "cache", "cli", "loadgen"}


def test_the_balancer_process_never_imports_torch_or_numpy() -> None:
    code = (
        "import sys, cli.main, balancer.app, cache.redis_store\n"
        "cli.main.build_parser()\n"
        "print(sorted(m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
