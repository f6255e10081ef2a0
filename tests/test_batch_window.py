"""The batching window and the bounded queue: mechanisms, on a fake clock where time matters."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import DeadlineExceeded, Overloaded
from tests.reference import infer_body, sample_inputs
from tests.test_batcher import _model
from worker.batch_window import Arrivals, hold_for
from worker.batcher import Batcher
from worker.codecs import JSON_CODEC
from worker.stats import BatchTimes


@given(
    now=st.floats(0, 10),
    since=st.floats(0, 10),
    window=st.floats(0, 1),
    rows=st.integers(0, 100),
    max_rows=st.integers(0, 64),
    others=st.booleans(),
    gap=st.none() | st.floats(0, 2),
)
def test_a_batch_is_never_held_past_its_window(
    now: float, since: float, window: float, rows: int, max_rows: int, others: bool, gap: float | None
) -> None:
    taken_at = now - since
    wait = hold_for(now, taken_at, window, rows, max_rows, others, Arrivals(gap=gap))
    assert 0 <= wait <= window
    assert now + wait <= taken_at + window + 1e-9 or wait == 0, "never past the window from when it was taken"
    if others or window == 0 or gap is None or gap > window or (max_rows and rows >= max_rows):
        assert wait == 0, "it waits only when waiting pays"


def test_arrivals_learn_the_gap_between_requests() -> None:
    arrivals = Arrivals()
    for t in (0.0, 0.001, 0.002, 0.003):
        arrivals.arrived(t)
    assert arrivals.gap == pytest.approx(0.001)
    arrivals.arrived(1.003)  # a long pause moves the mean up, a little at a time
    assert 0.001 < (arrivals.gap or 0) < 1.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_held_batch_takes_a_request_that_arrives_within_the_window(zoo: Path) -> None:
    model = _model(zoo, "mlp-00")
    clock = Clock()
    pool = ThreadPoolExecutor(1)
    rows: list[int] = []
    bodies = [orjson.dumps(infer_body(sample_inputs(zoo, "mlp-00", 1, seed))) for seed in range(4)]

    async def main() -> None:
        def on_batch(_: object, times: BatchTimes) -> None:
            rows.extend(times.rows)

        batcher = Batcher(pool, asyncio.get_running_loop(), 1 << 20, on_batch, window=0.0, clock=clock)
        for body in bodies[:2]:  # requests a millisecond apart: the model's gap is learnt
            await batcher.submit(model, body, JSON_CODEC)
            clock.now += 0.001
        rows.clear()
        batcher.window = 1.0
        first = batcher.submit(model, bodies[2], JSON_CODEC)  # the drain holds this batch open
        await asyncio.sleep(0.2)
        assert not first.done(), "held: another request is expected within the window"
        clock.now += 2.0  # the window is over once the next request is in
        second = batcher.submit(model, bodies[3], JSON_CODEC)
        await asyncio.wait_for(asyncio.gather(first, second), 10)

    try:
        asyncio.run(main())
    finally:
        pool.shutdown()
    assert rows == [2], "both requests ran as one forward"


def test_a_full_queue_refuses_at_once_and_a_late_request_is_not_run(zoo: Path) -> None:
    model = _model(zoo, "mlp-00")
    pool = ThreadPoolExecutor(1)
    rows: list[int] = []
    body = orjson.dumps(infer_body(sample_inputs(zoo, "mlp-00", 1, 3)))

    async def main() -> tuple[BaseException | None, list[object]]:
        batcher = Batcher(pool, asyncio.get_running_loop(), 1 << 20, lambda _, t: rows.extend(t.rows), max_queue=2)
        gate = asyncio.get_running_loop().run_in_executor(pool, time.sleep, 0.3)  # the inference thread is busy
        queued = [batcher.submit(model, body, JSON_CODEC), batcher.submit(model, body, JSON_CODEC, None, 0.0)]
        refused = None
        try:
            batcher.submit(model, body, JSON_CODEC)
        except Overloaded as exc:
            refused = exc
        await gate
        return refused, list(await asyncio.gather(*queued, return_exceptions=True))

    try:
        refused, answers = asyncio.run(main())
    finally:
        pool.shutdown()
    assert isinstance(refused, Overloaded) and refused.status == 503 and refused.retry_after
    assert isinstance(answers[0], bytes)
    assert isinstance(answers[1], DeadlineExceeded), "its deadline passed while it was queued: not run"
    assert rows == [1], "only the request still in time ran"


def test_a_full_queue_is_a_503_the_balancer_retries_elsewhere_without_ejecting(tmp_path: Path, logdir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor as Threads

    from tests.harness import request, start_balancer, start_worker
    from tests.metrics_text import metric_sum
    from worker.zoo import make_model

    root = tmp_path / "zoo"
    make_model(root, "slow", "mlp", {"in_features": 64, "hidden": [3072, 3072, 3072], "out_features": 10}, seed=5)
    # Each worker takes a request running and two queued: three workers hold a burst of 8, one does not.
    workers = [start_worker(root, logdir, "--max-queue", "2", "--max-queue-delay", "0") for _ in range(3)]
    balancer = None
    try:
        for w in workers:
            w.wait_ready()
        warm = infer_body(sample_inputs(root, "slow", 1, 0))
        for w in workers:  # resident everywhere: the burst meets queues, not loads
            assert request(w.url, "POST", "/v2/models/slow/infer", warm).status == 200
        direct = [infer_body(sample_inputs(root, "slow", 1, seed)) for seed in range(1, 13)]
        with Threads(12) as pool:
            answers = list(pool.map(lambda b: request(workers[0].url, "POST", "/v2/models/slow/infer", b), direct))
        refused = [a for a in answers if a.status == 503]
        assert refused, "a burst past the queue's bound is refused at once"
        assert all(a.headers.get("retry-after") and "queued" in a.json()["error"] for a in refused)
        assert {a.status for a in answers} <= {200, 503}

        balancer = start_balancer(workers, logdir, "--policy", "consistent").wait_ready()
        burst = [infer_body(sample_inputs(root, "slow", 1, seed)) for seed in range(20, 28)]
        with Threads(8) as pool:
            answers = list(
                pool.map(
                    lambda b: request(balancer.url, "POST", "/v2/models/slow/infer", b, {"Cache-Control": "no-cache"}),
                    burst,
                )
            )
        # Refused tries go to other workers; only when every queue is full at once does the
        # client get the overload answer itself, a 503 with Retry-After (never a failure).
        assert all(a.status == 200 or (a.status == 503 and a.headers.get("retry-after")) for a in answers)
        assert sum(a.status == 200 for a in answers) >= 6
        text = request(balancer.url, "GET", "/metrics").body.decode()
        assert metric_sum(text, "affinity_retries_total") >= 1, "the owner refused part of the burst"
        assert metric_sum(text, "affinity_worker_ejections_total") == 0, "overload is not failure"
        assert request(balancer.url, "GET", "/v2/health/ready").status == 200
    finally:
        if balancer is not None:
            balancer.proc.stop()
        for w in workers:
            w.proc.stop()
