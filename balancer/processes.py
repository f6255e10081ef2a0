"""``affinity balancer --processes N``: N balancer processes on one port.

Python runs one event loop per process, so one balancer uses one core. With N
processes bound to the same ports (SO_REUSEPORT) the kernel spreads incoming
connections over them; each is a whole balancer (same config, same ring, same
workers; its own in-process cache, shared through Redis when one is set). This
supervisor forks them before any thread or loop exists, forwards SIGTERM and
SIGINT to them, and replaces one that exits while it is not stopping (a crash,
or a rolling restart's SIGTERM to one process). Their metrics add up through a
shared directory (``common.shared_metrics``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

RESTART_PAUSE = 1.0


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    def __init__(self, count: int, child: Callable[[int, Path], int]) -> None:
        """``child(index, metrics_dir)`` runs one balancer process and returns its exit code."""
        self.count = count
        self.child = child
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="affinity-balancer-metrics-"))
        self.children: dict[int, int] = {}  # pid -> index
        self.stopping = False

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the child: a whole balancer
            code = 1
            try:
                _die_with_parent()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                code = self.child(index, self.metrics_dir)
            finally:
                os._exit(code)
        self.children[pid] = index

    def _forward(self, signum: int, frame: object) -> None:
        self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        for index in range(self.count):
            self._spawn(index)
        log.info("balancer: %d processes sharing the port", self.count)
        worst = 0
        try:
            while self.children:
                try:
                    pid, status = os.wait()
                except ChildProcessError:
                    break
                except InterruptedError:  # pragma: no cover - PEP 475 retries wait() itself
                    continue
                if pid not in self.children:
                    continue
                index = self.children.pop(pid)
                code = os.waitstatus_to_exitcode(status)
                with contextlib.suppress(OSError):
                    (self.metrics_dir / f"{pid}.json").unlink()
                if self.stopping:
                    worst = max(worst, abs(code))
                    continue
                log.warning("balancer process %d exited (code %d); starting another", pid, code)
                time.sleep(RESTART_PAUSE)
                if not self.stopping:
                    self._spawn(index)
        finally:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return worst
