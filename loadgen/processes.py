"""One generator process, or several whose results merge into one.

A process prepares everything first (client, templates for every model), then
starts at an instant shared by all processes (``time.monotonic`` is one
system-wide clock on Linux), so their per-second series line up. Beyond one
process, children are spawned (a clean interpreter each, never a fork of a
process with threads), report progress and their results through one queue,
and are stopped, whatever happens, before this returns.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue as queue_module
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from common.lifecycle import freeze_start_up_objects
from loadgen.clients import make_client
from loadgen.clients.base import InferClient
from loadgen.config import LoadConfig
from loadgen.engine import DRAIN_GRACE, Engine, Snapshot
from loadgen.payloads import PayloadSource
from loadgen.popularity import ModelPicker, Popularity
from loadgen.stats import RunStats, merge_all
from loadgen.target import Target

Tick = Callable[[Snapshot], None]
START_DELAY = 0.05  # between preparing and the first request
READY_TIMEOUT = 120.0  # for spawned children to import and prepare

T = TypeVar("T")


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where installed (the generator's own cost per request matters)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency on Linux and macOS
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def prepare(config: LoadConfig, target: Target) -> tuple[InferClient, PayloadSource]:
    client = make_client(config.protocol, target.url, config.connections, config.timeout)
    picker = ModelPicker(
        [m.name for m in target.models], Popularity.parse(config.popularity), random.Random(f"models-{config.seed}")
    )  # a stream apart from the arrivals' (seeded with the bare seed): gaps and models stay independent
    source = PayloadSource(target.models, picker, client.template, config.payload_size, config.repeat, config.seed)
    return client, source


def run_here(config: LoadConfig, target: Target, tick: Tick | None = None) -> RunStats:
    """The whole run in this process."""
    client, source = prepare(config, target)
    engine = Engine(config, client, source)
    return run_async(engine.run(time.monotonic() + START_DELAY, tick))


def _child(index: int, config: LoadConfig, target: Target, messages: Any, go: Any, start_at: Any) -> None:
    try:
        client, source = prepare(config, target)
        engine = Engine(config, client, source)
        freeze_start_up_objects()  # a child of its own: its full collections stall its sends less
        messages.put(("ready", index, None))
        if not go.wait(READY_TIMEOUT):
            return
        stats = run_async(engine.run(start_at.value, lambda s: messages.put(("tick", index, s))))
        messages.put(("done", index, stats.to_wire()))
    except BaseException as exc:
        messages.put(("error", index, f"{type(exc).__name__}: {exc}"))


def run_processes(config: LoadConfig, target: Target, tick: Tick | None = None) -> RunStats:
    """``config.processes`` children, each with its share of the load."""
    n = config.processes
    ctx = multiprocessing.get_context("spawn")
    messages = ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    children = [
        ctx.Process(
            target=_child, args=(i, config.share(i), target, messages, go, start_at), name=f"loadgen-{i}", daemon=True
        )
        for i in range(n)
    ]
    try:
        for child in children:
            child.start()
        _collect(messages, children, "ready", READY_TIMEOUT)
        start_at.value = time.monotonic() + START_DELAY
        go.set()
        budget = config.warmup + config.duration + config.timeout + DRAIN_GRACE + READY_TIMEOUT
        latest: dict[int, Snapshot] = {}

        def on_tick(index: int, snapshot: Snapshot) -> None:
            latest[index] = snapshot
            if tick is not None:
                tick(Snapshot.combine(list(latest.values())))

        wires = _collect(messages, children, "done", budget, on_tick)
        return merge_all([RunStats.from_wire(w) for w in wires])
    finally:
        go.set()  # a child still waiting to start returns at once
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.terminate()
                child.join(timeout=5)
        messages.close()


def _collect(
    messages: Any,
    children: list[Any],
    kind: str,
    timeout: float,
    on_tick: Callable[[int, Snapshot], None] | None = None,
) -> list[Any]:
    """Wait for one ``kind`` message from every child (ticks passed on)."""
    got: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    seen_dead = False  # a child's last message can still be in the pipe when it is seen dead: look once more
    while len(got) < len(children):
        try:
            what, index, payload = messages.get(timeout=0.5)
        except queue_module.Empty:
            dead = [c.name for i, c in enumerate(children) if i not in got and not c.is_alive()]
            if dead and seen_dead:
                raise RuntimeError(f"generator process {', '.join(dead)} exited without a result") from None
            seen_dead = bool(dead)
            if time.monotonic() > deadline:
                raise RuntimeError(f"generator processes did not report {kind!r} in {timeout:.0f}s") from None
            continue
        if what == "error":
            raise RuntimeError(f"generator process {index} failed: {payload}")
        if what == "tick":
            if on_tick is not None:
                on_tick(index, payload)
        elif what == kind:
            got[index] = payload
    return [got[i] for i in range(len(children))]
