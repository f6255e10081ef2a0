"""One lifecycle for both processes: drain on the first signal, exit at once on a second."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.harness import Server, private_cluster, request, start_worker, wait_until


def _second_signal_forces_exit(server: Server) -> None:
    server.proc.kill(signal.SIGTERM)
    wait_until(lambda: request(server.url, "GET", "/v2/health/ready").status == 503)
    assert server.proc.alive(), "the drain delay (60 s) is running"
    server.proc.kill(signal.SIGTERM)
    assert server.proc.popen is not None
    assert server.proc.popen.wait(20) == 1, "a second signal exits without waiting out the drain"
    assert "second signal" in server.proc.log_tail()


def test_second_signal_forces_a_worker_to_exit(zoo: Path, logdir: Path) -> None:
    worker = start_worker(zoo, logdir, "--drain-delay", "60").wait_ready()
    try:
        _second_signal_forces_exit(worker)
    finally:
        worker.proc.stop()


def test_second_signal_forces_a_balancer_to_exit(zoo: Path, logdir: Path) -> None:
    with private_cluster(zoo, logdir, 1, "--drain-delay", "60") as (_, balancer):
        _second_signal_forces_exit(balancer)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_either_signal_drains_and_exits_cleanly(zoo: Path, logdir: Path, sig: int) -> None:
    worker = start_worker(zoo, logdir).wait_ready()
    try:
        worker.proc.kill(sig)
        assert worker.proc.popen is not None and worker.proc.popen.wait(20) == 0
        log = worker.proc.log_tail()
        assert "draining" in log and "stopped" in log and "Traceback" not in log
    finally:
        worker.proc.stop()
