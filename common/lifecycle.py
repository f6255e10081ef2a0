"""One process lifecycle for the balancer and the worker.

    start -> serve until SIGTERM/SIGINT -> not ready (drain delay, still serving)
          -> stop: stop listening, finish what was accepted, close resources -> exit 0
    a second signal at any point of the drain forces the exit (code 1), as
    uvicorn's ``Server`` does: an operator who presses Ctrl-C twice means it.

An application is anything with ``start``, ``begin_drain`` and ``stop``; it is
run on uvloop where installed.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Coroutine
from typing import Any, NoReturn, Protocol

log = logging.getLogger(__name__)

FORCED_EXIT = 1


class Application(Protocol):
    name: str

    async def start(self) -> None: ...

    def begin_drain(self) -> None:
        """Report not-ready from now on, while still serving."""

    async def stop(self) -> None:
        """Stop listening, let accepted requests finish (bounded), close resources."""


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run a process's main coroutine on the fastest event loop available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def serve_until_signalled(app: Application, drain_delay: float) -> int:
    """Start ``app``, serve until a signal, drain and stop; the process's exit code."""
    loop = asyncio.get_running_loop()
    first, second = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        (second if first.is_set() else first).set()

    # Handlers first: a signal while the app starts (a balancer process waiting for its
    # workers, a worker warming up) is answered by a drain once it has started, not by
    # the default action's sudden death.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await app.start()
        await first.wait()
        log.info("%s draining", app.name)
        app.begin_drain()
        stopping = loop.create_task(_drain_then_stop(app, drain_delay))
        forced = loop.create_task(second.wait())
        await asyncio.wait((stopping, forced), return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        if not stopping.done():
            log.warning("%s: second signal, exiting without waiting for the drain", app.name)
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopping
            return FORCED_EXIT
        stopping.result()
        log.info("%s stopped", app.name)
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _drain_then_stop(app: Application, drain_delay: float) -> None:
    # Not ready but still serving, so load balancers and Kubernetes stop sending first.
    await asyncio.sleep(drain_delay)
    await app.stop()


def freeze_start_up_objects() -> None:
    """Put what the process made before serving out of the garbage collector's reach.

    The objects of the imports (torch's above all) and of a worker's warm-up live
    until exit, yet each full collection would scan them again while holding the
    GIL: ~298,000 objects and ~110 ms in a worker, 20-50 ms in the balancer and
    the load generator (2026-12-02, counted with ``gc.callbacks``). Frozen, a
    full collection scans only what was made since. Collected first, so no garbage
    is kept for good. Called once, before the process serves or sends, and only by
    a process's own entry, never by code a test may run in its process: a frozen
    object that later becomes part of a garbage cycle is never collected, nor what
    that cycle holds (a test of the GPU tier's device memory saw this when the load
    generator, run in pytest's process, froze it).
    """
    gc.collect()
    gc.freeze()


def exit_promptly(code: int) -> NoReturn:
    """End a process whose work is done, without the interpreter's teardown.

    A process that imported torch spends ~0.9 s after its last line (a worker,
    measured 2026-12-02): ~0.6 s in the interpreter's final garbage collection over
    every object torch's import made, ~0.3 s in libtorch's static destructors. A
    stop, a rolling restart and every CLI command waited for it. Nothing of ours
    needs it: the atexit callbacks (logging's flush, temporary directories'
    finalizers) run here, then the standard streams are flushed, and the process
    ends. Where another Python thread is still running, the normal exit runs
    instead, so that thread is joined as it would have been.
    """
    main = threading.main_thread()
    if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
