"""Two worker processes mapping the same model share one copy of its weights in
the page cache: their combined PSS (proportional set size, /proc/<pid>/smaps_rollup)
grows by about one copy, not two. The naive path (weights copied into each
process's own memory) is measured beside it, so the test shows it can tell."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from worker.paging import TorchPager
from worker.zoo import make_zoo

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux smaps_rollup")


def pss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no Pss line")


@contextmanager
def children(directory: Path, how: str, count: int = 2) -> Iterator[list[subprocess.Popen[str]]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.pss_child", str(directory), how],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


def step(procs: list[subprocess.Popen[str]], expect: str) -> None:
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(expect), f"child said {line!r}"


def combined_growth(directory: Path, how: str) -> int:
    """How much two processes' combined PSS grows when each loads the model."""
    with children(directory, how) as procs:
        step(procs, "ready")  # both have imported torch, so its shared pages are split already
        before = sum(pss_bytes(p.pid) for p in procs)
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        step(procs, "loaded")
        return sum(pss_bytes(p.pid) for p in procs) - before


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    root = tmp_path_factory.mktemp("shared")
    [made] = make_zoo(root, count=1, sizes=[48 << 20], architectures=("mlp",))
    return made.path, TorchPager().weights_bytes(("mlp-00", "1"), made.path)


def test_two_processes_mapping_one_model_hold_one_copy(big_model: tuple[Path, int]) -> None:
    directory, weights = big_model
    mapped = combined_growth(directory, "mapped")
    copied = combined_growth(directory, "copied")
    print(f"weights {weights / 2**20:.1f} MiB; combined PSS growth: mapped {mapped / 2**20:.1f} MiB, "
          f"copied {copied / 2**20:.1f} MiB")  # fmt: skip
    assert 0.75 * weights < mapped < 1.35 * weights  # one copy, shared half and half
    assert copied > 1.75 * weights  # two private copies
