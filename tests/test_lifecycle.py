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
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", _PROGRAM, str(tmp_path), how], cwd=root,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (3, "no newline, still buffered", "")
    assert (tmp_path / "atexit").read_text() == "ran", "atexit callbacks run either way"
    # The witness shows which exit ran: only the interpreter's teardown finalizes it.
    assert (tmp_path / "teardown").exists() == (how != "prompt")
    assert (tmp_path / "thread").exists() == (how == "thread")


def test_a_stopped_worker_exits_without_the_interpreters_teardown(zoo: Path, logdir: Path, tmp_path: Path) -> None:
    # A witness loaded into the worker at start-up (sitecustomize) that only the teardown finalizes.
    (tmp_path / "sitecustomize.py").write_text(
        "import atexit\nfrom pathlib import Path\n"
        f"OUT = Path({str(tmp_path)!r})\n"
        "atexit.register(lambda: (OUT / 'atexit').write_text('ran'))\n"
        "class Witness:\n"
        "    def __del__(self):\n"
        "        (OUT / 'teardown').write_text('ran')\n"
        "KEEP = Witness()\n"
    )
    worker = start_worker(zoo, logdir, env={"PYTHONPATH": str(tmp_path)}).wait_ready()
    try:
        worker.proc.kill(signal.SIGTERM)
        assert worker.proc.popen is not None and worker.proc.popen.wait(20) == 0
        assert "stopped" in worker.proc.log_tail()
        assert (tmp_path / "atexit").exists() and not (tmp_path / "teardown").exists()
    finally:
        worker.proc.stop()
