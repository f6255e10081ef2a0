"""Dynamic batching per model: requests that queue up run as one batch.

Why: handing each request to the inference pool on its own costs a thread
switch and a GIL hand-off per request; measured here, that halved a worker's
throughput on a small MLP (1.5k vs 3.0k req/s when run inline). Batching pays
that once per batch, and one forward over N rows costs far less than N
forwards.

How: each model has a queue. A request joins its model's queue; if no drain
is running for the model, one is started in the pool. A drain takes everything
queued (up to ``max_batch_size`` rows per forward), decodes and checks each
request (a bad one fails alone), runs one forward per group of same-shaped
inputs, splits the outputs back, encodes each answer, and resolves the whole
batch's futures (and reports its sizes and times, ``worker.stats.BatchTimes``)
with one ``call_soon_threadsafe``. It then looks again, and
ends when the queue is empty. Batches form under load, while a drain is busy;
a batch that is not full may also be held open a little (``window``, Triton's
``max_queue_delay``; off by default, as Triton's, since holding measured slower
in closed loop: docs/benchmarks.md) when requests for its model have been
arriving closer together than that and no other model is waiting
(``worker.batch_window``), so a lone request is not delayed for nothing.

Bounded: a model's queue holds at most ``max_queue`` requests; one more is
answered at once with 503 and ``Retry-After`` (the balancer tries another
worker), never queued without bound. A request whose deadline passed while it
waited is answered 504 without running (queued time counts toward it).

Where it runs: each request was leased its model by the memory manager, on the
host or on a device; the queue runs every round on the model (and device) of
the latest request queued, which that request's lease keeps resident until its
answer is delivered. After a promotion to the GPU or a reload, the next round
runs on the new copy.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.errors import DeadlineExceeded, ModelUnavailable, Overloaded, ProtocolError
from protocol.types import InferRequest
from worker.batch_window import Arrivals, hold_for
from worker.codecs import Codec
from worker.device import Device
from worker.paging import run_on
from worker.runner import LoadedModel, answer_for, check_request
from worker.stats import BatchTimes

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Job:
    """A queued request: its payload (or an already decoded request), its codec,
    and where its answer goes."""

    payload: Any
    codec: Codec
    future: asyncio.Future[Any]
    queued_ns: int
    deadline: float | None = None  # time.monotonic() past which the answer is no use


# A decoded, checked request: its input arrays in the model's order, and its job.
Ready = tuple[InferRequest, list[np.ndarray], _Job]
Outcome = tuple[asyncio.Future[Any], Any]  # the answer, or the exception to raise


@dataclass(slots=True)
class _Queue:
    items: deque[_Job]
    model: LoadedModel | None  # None while idle: an evicted model must not be kept alive here
    device: Device | None
    running: bool = False
    arrivals: Arrivals | None = None


class Batcher:
    def __init__(
        self,
        pool: Executor,
        loop: asyncio.AbstractEventLoop,
        max_elements: int,
        on_batch: Callable[[LoadedModel, BatchTimes], None] | None = None,
        max_queue: int = 256,
        window: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._loop = loop
        self._max_elements = max_elements
        self._on_batch = on_batch
        self.max_queue = max_queue
        self.window = window  # seconds a batch may be held open (a model's config may set its own)
        self._clock = clock
        self._queues: dict[tuple[str, str], _Queue] = {}
        self._lock = threading.Condition()

    def submit(
        self,
        model: LoadedModel,
        payload: Any,
        codec: Codec,
        device: Device | None = None,
        deadline: float | None = None,
    ) -> asyncio.Future[Any]:
        """Queue one request for ``model`` (a payload ``codec`` decodes, or an
        already decoded ``InferRequest``), to run on ``device`` (None: the host);
        the future resolves to the answer encoded by ``codec``. Overloaded (503)
        when the model's queue is full."""
        key = (model.name, model.version)
        job = _Job(payload, codec, self._loop.create_future(), time.perf_counter_ns(), deadline)
        with self._lock:
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(deque(), model, device, arrivals=Arrivals())
            if len(queue.items) >= self.max_queue:
                raise Overloaded(f"model '{model.name}' has {len(queue.items)} requests queued here; try again")
            queue.items.append(job)
            queue.model, queue.device = model, device
            assert queue.arrivals is not None
            queue.arrivals.arrived(self._clock())
            start = not queue.running
            queue.running = True
            self._lock.notify_all()  # a drain holding its batch open for this model takes it
        if start:
            self._pool.submit(self._drain, queue)
        return job.future

    def _drain(self, queue: _Queue) -> None:
        """Runs in the pool: batches until the model's queue is empty. Whatever
        goes wrong fails that batch's callers (500) and the queue goes on; the
        queue is never left marked running with nobody draining it."""
        try:
            while True:
                with self._lock:
                    if not queue.items:
                        queue.running = False
                        queue.model = queue.device = None
                        return
                    jobs = list(queue.items)
                    queue.items.clear()
                    model, device = queue.model, queue.device
                    assert model is not None
                    self._hold(queue, model, jobs)
                assert model is not None
                times = BatchTimes()
                try:
                    outcomes = self._run(model, device, jobs, times)
                except Exception as exc:
                    log.exception("model %s: a batch failed unexpectedly", model.name)
                    failure = ModelUnavailable(f"model '{model.name}' failed to run ({type(exc).__name__})")
                    outcomes = [(job.future, failure) for job in jobs]
                self._loop.call_soon_threadsafe(self._deliver, model, times, outcomes)
        except BaseException:
            with self._lock:
                queue.running = False
                queue.model = queue.device = None
            raise

    def _hold(self, queue: _Queue, model: LoadedModel, jobs: list[_Job]) -> None:
        """Under the lock: keep the batch open while waiting pays (``worker.batch_window``),
        taking what arrives for this model meanwhile."""
        window = model.config.max_queue_delay if model.config.max_queue_delay is not None else self.window
        if window <= 0 or queue.arrivals is None:
            return
        taken_at = self._clock()
        while True:
            others = any(q is not queue and q.items for q in self._queues.values())
            wait = hold_for(
                self._clock(), taken_at, window, len(jobs), model.config.max_batch_size, others, queue.arrivals
            )
            if wait <= 0:
                return
            self._lock.wait(wait)
            jobs.extend(queue.items)
            queue.items.clear()

    def _deliver(self, model: LoadedModel, times: BatchTimes, outcomes: list[Outcome]) -> None:
        """On the event loop: report the round's sizes and times, resolve the futures."""
        if self._on_batch is not None:
            self._on_batch(model, times)
        for future, outcome in outcomes:
            if future.done():  # the caller went away
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _run(self, model: LoadedModel, device: Device | None, jobs: list[_Job], times: BatchTimes) -> list[Outcome]:
        """In the pool: decode, check, forward, encode; ``times`` gets what each step took."""
        clock = time.perf_counter_ns
        started = clock()
        outcomes: list[Outcome] = []
        ready: list[Ready] = []
        input_ns: dict[int, int] = {}  # per job (by id), its decode and check
        now = time.monotonic()
        for job in jobs:
            began = clock()
            if job.deadline is not None and now >= job.deadline:
                outcomes.append((job.future, DeadlineExceeded("the request's deadline passed while it was queued")))
                continue
            try:
                payload = job.payload
                request = (
                    payload if isinstance(payload, InferRequest) else job.codec.decode(payload, self._max_elements)
                )
                ready.append((request, check_request(request, model.config), job))
            except ProtocolError as exc:
                outcomes.append((job.future, exc))
            input_ns[id(job)] = clock() - began
        for group in _groups(ready, model.config.max_batch_size):
            began = clock()
            try:
                results = _forward(model, device, [arrays for _, arrays, _ in group])
            except ProtocolError as exc:  # outputs other than declared (worker.interface): said as it is
                outcomes.extend((job.future, exc) for _, _, job in group)
                continue
            except Exception as exc:  # torch raises a wide range; the batch fails, the worker stays up
                failure = ModelUnavailable(f"model '{model.name}' failed to run ({type(exc).__name__})")
                outcomes.extend((job.future, failure) for _, _, job in group)
                continue
            infer_ns = clock() - began
            group_input = group_output = 0
            for (request, _, job), outputs in zip(group, results, strict=True):
                began = clock()
                try:
                    outcomes.append((job.future, job.codec.encode(answer_for(model, request, outputs), request)))
                except ProtocolError as exc:
                    outcomes.append((job.future, exc))
                except Exception as exc:  # an output the codec cannot encode: this caller fails alone
                    log.warning("model %s: answer could not be encoded (%s)", model.name, type(exc).__name__)
                    failure = ModelUnavailable(f"model '{model.name}' produced an answer that cannot be encoded")
                    outcomes.append((job.future, failure))
                group_output += clock() - began
                group_input += input_ns[id(job)]
                times.queue_ns += max(0, started - job.queued_ns)
            rows = sum(arrays[0].shape[0] for _, arrays, _ in group)
            times.forwards.append((rows, group_input, infer_ns, group_output))
            times.requests += len(group)
            times.input_ns += group_input
            times.infer_ns += infer_ns * len(group)
            times.output_ns += group_output
        return outcomes


def _groups(ready: list[Ready], max_batch: int) -> list[list[Ready]]:
    """Requests whose inputs agree on every dimension but the first, in batches of
    at most ``max_batch`` rows (each request alone when the model has no batch dimension)."""
    if max_batch <= 0:
        return [[entry] for entry in ready]
    by_shape: dict[tuple[tuple[int, ...], ...], list[list[Ready]]] = {}
    rows: dict[tuple[tuple[int, ...], ...], int] = {}
    for entry in ready:
        shape = tuple(a.shape[1:] for a in entry[1])
        n = entry[1][0].shape[0]
        batches = by_shape.setdefault(shape, [[]])
        if batches[-1] and rows[shape] + n > max_batch:
            batches.append([])
            rows[shape] = 0
        batches[-1].append(entry)
        rows[shape] = rows.get(shape, 0) + n
    return [batch for batches in by_shape.values() for batch in batches]


def _forward(model: LoadedModel, device: Device | None, inputs: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """One forward over the concatenated inputs (on ``device`` when given), split back per request."""
    if len(inputs) == 1:
        return [run_on(model, inputs[0], device)]
    stacked = [np.concatenate(column) for column in zip(*inputs, strict=True)]
    outputs = run_on(model, stacked, device)
    bounds = np.cumsum([arrays[0].shape[0] for arrays in inputs])[:-1]
    per_output = [np.split(out, bounds) for out in outputs]
    return [list(parts) for parts in zip(*per_output, strict=True)]
