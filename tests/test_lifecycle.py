"""One lifecycle for both processes: drain on the first signal, exit at once on a second."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import Server, private_cluster, request, start_balancer, start_worker, stop_all, wait_until
from tests.reference import infer_body, sample_inputs


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


_PROGRAM = """
import atexit, sys, threading, time
from pathlib import Path
from common.lifecycle import exit_promptly

out, how = Path(sys.argv[1]), sys.argv[2]
atexit.register(lambda: (out / "atexit").write_text("ran"))


class Witness:
    def __del__(self) -> None:  # runs when the interpreter tears its modules down
        (out / "teardown").write_text("ran")


KEEP = Witness()
if how == "thread":  # a thread still working when main is done is joined, as a normal exit would
    threading.Thread(target=lambda: (time.sleep(0.3), (out / "thread").write_text("done"))).start()
sys.stdout.write("no newline, still buffered")
if how == "normal":
    sys.exit(3)
exit_promptly(3)
"""


@pytest.mark.parametrize("how", ["prompt", "normal", "thread"])
def test_a_finished_process_skips_the_teardown_but_not_its_exit_callbacks(tmp_path: Path, how: str) -> None:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", _PROGRAM, str(tmp_path), how], cwd=root,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (3, "no newline, still buffered", "")
    assert (tmp_path / "atexit").read_text() == "ran", "atexit callbacks run either way"
    # The witness shows which exit ran: only the interpreter's teardown finalizes it.
    assert (tmp_path / "teardown").exists() == (how != "prompt")
    assert (tmp_path / "thread").exists() == (how == "thread")


_PROBE = """
import atexit, gc, os
from pathlib import Path
OUT = Path({out!r})
atexit.register(lambda: (OUT / f"frozen-{{os.getpid()}}").write_text(str(gc.get_freeze_count())))


class Witness:
    def __del__(self):  # runs when the interpreter tears its modules down
        (OUT / f"teardown-{{os.getpid()}}").write_text("ran")


KEEP = Witness()
"""


def _probe(directory: Path) -> dict[str, str]:
    """The environment of a process that reports, at exit, how many objects it had
    frozen and whether the interpreter's teardown ran (loaded at start-up as sitecustomize,
    so a child of it reports too, under its own pid: the balancer's key process)."""
    directory.mkdir()
    (directory / "sitecustomize.py").write_text(_PROBE.format(out=str(directory)))
    return {"PYTHONPATH": str(directory)}


def test_both_processes_freeze_their_start_up_and_exit_without_the_teardown(
    zoo: Path, logdir: Path, tmp_path: Path
) -> None:
    worker = start_worker(zoo, logdir, env=_probe(tmp_path / "worker")).wait_ready()
    balancer = start_balancer([worker], logdir, env=_probe(tmp_path / "balancer")).wait_ready()
    try:
        body = infer_body(sample_inputs(zoo, "mlp-00", 1, seed=1))
        assert request(balancer.url, "POST", "/v2/models/mlp-00/infer", body).status == 200
        for server in (balancer, worker):
            server.proc.kill(signal.SIGTERM)
            assert server.proc.popen is not None and server.proc.popen.wait(20) == 0
            assert "stopped" in server.proc.log_tail()
        for name, server, least in (("worker", worker, 100_000), ("balancer", balancer, 10_000)):
            # What imports and a worker's warm-up made is out of every later full collection's scan.
            assert int((tmp_path / name / f"frozen-{server.proc.pid}").read_text()) > least, name
            assert not (tmp_path / name / f"teardown-{server.proc.pid}").exists(), f"the {name} had a teardown"
    finally:
        stop_all([balancer.proc, worker.proc])
