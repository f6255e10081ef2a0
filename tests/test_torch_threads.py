"""Placement reaches the threads that run models: a worker pinned to one core
with one inference thread runs its forward passes on that thread alone.

torch's thread count belongs to the thread that sets it; a worker's inference
threads start after the process set its own, so each must set it again
(``worker.torch_threads``). Without that, MKL ran each matrix-vector product
of a batch-1 forward on a second OpenMP thread sharing the worker's one core.
What a user would check with ``top -H``: which of the worker's threads work.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from cli.bench.throughput import WIDTH, make_models
from tests.harness import request, start_worker

pytestmark = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="OpenMP's default is one thread on one core: nothing to tell apart"
)


def _cpu_by_thread(pid: int) -> dict[int, int]:
    """Each thread's CPU time so far, in clock ticks."""
    ticks = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended
        ticks[int(task.name)] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


def test_a_pinned_worker_runs_each_forward_on_its_inference_thread_alone(tmp_path: Path) -> None:
    root = tmp_path / "models"
    name = make_models(root)[0]  # three 512x512 layers: batch 1 is a matrix-vector product MKL would split
    core = str(min(os.sched_getaffinity(0)))  # one core this test may use
    worker = start_worker(root, tmp_path, "--cpus", core, "--max-queue-delay", "0").wait_ready()
    try:
        path = f"/v2/models/{name}/infer"

        def infer(i: int) -> None:
            data = [float(i)] + [0.5] * (WIDTH - 1)
            body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, WIDTH], "data": data}]}
            resp = request(worker.url, "POST", path, orjson.dumps(body), {"Cache-Control": "no-store"})
            assert resp.status == 200, resp.body

        for i in range(20):  # the model paged in, the pool's thread started
            infer(i)
        before = _cpu_by_thread(worker.proc.pid)
        for i in range(1000):  # one at a time: every forward is a batch of one
            infer(i)
        after = _cpu_by_thread(worker.proc.pid)
        grew = {tid: after[tid] - before.get(tid, 0) for tid in after}
        total = sum(grew.values())
        assert total >= 30, f"too little CPU time to tell the threads apart ({total} ticks)"
        # The event loop's thread (HTTP, JSON) and the one inference thread; no other thread
        # works for more than a stray tick or two (an OpenMP thread here took a tenth of it all).
        working = sorted((t for t in grew.values() if t >= 3), reverse=True)
        assert len(working) <= 2, f"threads doing the work (ticks of {total}): {working}"
    finally:
        worker.proc.stop()
