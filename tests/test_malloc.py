"""The worker caps glibc's malloc arenas (``--malloc-arenas``, 2 by default) so its RSS
does not climb in steps with batch sizes; the environment's own setting wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.config import WorkerConfig

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")


def _run(code: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, timeout=60
    ).stdout.strip()


@glibc
def test_the_cap_is_set_unless_the_environment_says() -> None:
    code = "from common.malloc import limit_arenas; print(limit_arenas(2), limit_arenas(0))"
    assert _run(code) == "True False"
    env = {**os.environ, "MALLOC_ARENA_MAX": "4"}
    assert _run(code, env) == "False False", "MALLOC_ARENA_MAX wins: glibc reads it itself"


@glibc
def test_threads_share_the_capped_arenas() -> None:
    """With the cap at 1, eight threads allocating at once all use the main arena:
    glibc's malloc_stats lists one arena instead of several."""
    code = """
import ctypes, ctypes.util, threading, sys
from common.malloc import limit_arenas
assert limit_arenas(1)
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
barrier = threading.Barrier(8)
def work():
    barrier.wait()
    for _ in range(2000):
        libc.free(libc.malloc(4096))
threads = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
libc.malloc_stats()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stderr.count("Arena ") == 1, done.stderr


def test_the_flag_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="malloc-arenas"):
        WorkerConfig(models=tmp_path, malloc_arenas=-1)
    assert WorkerConfig(models=tmp_path).malloc_arenas == 2
