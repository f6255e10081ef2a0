"""Dynamic batching: queued requests run as one forward, answers split back correctly."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import pytest

from protocol.errors import BadRequest, ModelUnavailable
from tests.reference import infer_body, run_reference, sample_inputs
from worker.batcher import Batcher
from worker.codecs import JSON_CODEC, Codec
from worker.device import StandInDevice
from worker.paging import TorchPager
from worker.runner import LoadedModel
from worker.stats import BatchTimes


def _model(zoo: Path, name: str) -> LoadedModel:
    return TorchPager().load((name, "1"), zoo / name / "1")


def _run_gated(
    model: LoadedModel, bodies: list[bytes], codec: Codec = JSON_CODEC
) -> tuple[list[int], list[bytes | BaseException]]:
    """Queue every body while the pool's only thread is held, then let it go:
    the batcher must find them all queued at once."""
    pool = ThreadPoolExecutor(1)
    gate = threading.Event()
    batches: list[int] = []

    def on_batch(model: LoadedModel, times: BatchTimes) -> None:
        batches.extend(times.rows)

    async def main() -> list[bytes | BaseException]:
        batcher = Batcher(pool, asyncio.get_running_loop(), 1 << 20, on_batch)
        pool.submit(gate.wait, 10)
        futures = [batcher.submit(model, body, codec) for body in bodies]
        gate.set()
        return await asyncio.gather(*futures, return_exceptions=True)

    try:
        return batches, asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        pool.shutdown()


@pytest.mark.parametrize("name", ["mlp-00", "transformer-02"])
def test_queued_requests_run_as_one_forward(zoo: Path, name: str) -> None:
    model = _model(zoo, name)
    inputs = [sample_inputs(zoo, name, batch, seed) for seed, batch in enumerate([1, 3, 2, 1, 4])]
    bodies = [orjson.dumps(infer_body(i, f"r{n}")) for n, i in enumerate(inputs)]
    batches, answers = _run_gated(model, bodies)
    assert batches == [11], "one forward over all 11 rows"
    for n, (answer, given) in enumerate(zip(answers, inputs, strict=True)):
        assert isinstance(answer, bytes)
        decoded = orjson.loads(answer)
        assert decoded["id"] == f"r{n}"
        (out,) = decoded["outputs"]
        expected = run_reference(zoo, name, [a for _, _, a in given])[0]
        assert out["shape"] == list(expected.shape)
        np.testing.assert_allclose(np.asarray(out["data"], np.float32).reshape(expected.shape), expected, 1e-4, 1e-5)


def test_a_bad_request_fails_alone(zoo: Path) -> None:
    model = _model(zoo, "mlp-00")
    good = orjson.dumps(infer_body(sample_inputs(zoo, "mlp-00", 2, 1)))
    bad = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]})
    batches, answers = _run_gated(model, [good, bad, good])
    assert batches == [4]
    assert isinstance(answers[1], BadRequest) and "shape" in answers[1].message
    # Same input, different rows of one batch: equal within FP32 tolerance (not
    # necessarily to the last bit: the GEMM's blocking depends on the row).
    first, third = (np.asarray(orjson.loads(a)["outputs"][0]["data"]) for a in (answers[0], answers[2]))  # type: ignore[arg-type]
    np.testing.assert_allclose(first, third, rtol=1e-5, atol=1e-6)


def test_batches_respect_the_model_limit(zoo: Path) -> None:
    model = _model(zoo, "mlp-00")
    assert model.config.max_batch_size == 64
    bodies = [orjson.dumps(infer_body(sample_inputs(zoo, "mlp-00", 30, seed))) for seed in range(3)]
    batches, answers = _run_gated(model, bodies)
    assert batches == [60, 30]
    assert all(isinstance(a, bytes) for a in answers)


def test_an_unexpected_failure_fails_its_batch_and_the_queue_goes_on(zoo: Path) -> None:
    """A codec that raises something other than a request error (a bug, not bad
    input) fails that batch's callers with a 500; the model's queue keeps serving."""
    model = _model(zoo, "mlp-00")
    good = orjson.dumps(infer_body(sample_inputs(zoo, "mlp-00", 1, 7)))

    def decode(payload: bytes, limit: int):  # type: ignore[no-untyped-def]
        if payload == b"boom":
            raise RuntimeError("a bug in a codec")
        return JSON_CODEC.decode(payload, limit)

    pool = ThreadPoolExecutor(1)
    gate = threading.Event()

    async def main() -> tuple[list[object], list[object]]:
        batcher = Batcher(pool, asyncio.get_running_loop(), 1 << 20)
        codec = Codec("flaky", decode, JSON_CODEC.encode)
        pool.submit(gate.wait, 10)
        first = [batcher.submit(model, body, codec) for body in (good, b"boom", good)]
        gate.set()
        failed = await asyncio.gather(*first, return_exceptions=True)
        later = await asyncio.wait_for(asyncio.gather(batcher.submit(model, good, codec)), 10)
        return failed, later

    try:
        failed, later = asyncio.run(main())
    finally:
        pool.shutdown()
    assert all(isinstance(f, ModelUnavailable) and f.status == 500 for f in failed), failed
    assert "RuntimeError" in failed[0].message  # type: ignore[union-attr]
    assert isinstance(later[0], bytes) and orjson.loads(later[0])["model_name"] == "mlp-00"


def test_an_answer_that_cannot_be_encoded_fails_alone(zoo: Path) -> None:
    model = _model(zoo, "mlp-00")
    bodies = [orjson.dumps(infer_body(sample_inputs(zoo, "mlp-00", 1, seed), f"r{seed}")) for seed in range(3)]

    def encode(response, request):  # type: ignore[no-untyped-def]
        if response.id == "r1":
            raise TypeError("cannot encode")
        return JSON_CODEC.encode(response, request)

    batches, answers = _run_gated(model, bodies, Codec("picky", JSON_CODEC.decode, encode))
    assert batches == [3]
    assert isinstance(answers[0], bytes) and isinstance(answers[2], bytes)
    assert isinstance(answers[1], ModelUnavailable)


def test_a_batch_runs_on_the_leased_device_and_reports_its_times(zoo: Path) -> None:
    """The forward runs where the lease says (inputs in, outputs out through the
    device), and the round's sizes and times come back for the statistics."""
    name = "transformer-02"
    device = StandInDevice()
    on_device = TorchPager().to_device((name, "1"), _model(zoo, name), device)
    before = (device.counts.host_to_device, device.counts.device_to_host)
    inputs = [sample_inputs(zoo, name, batch, seed) for seed, batch in enumerate([2, 1, 3])]
    bodies = [orjson.dumps(infer_body(i)) for i in inputs]
    pool = ThreadPoolExecutor(1)
    gate = threading.Event()
    rounds: list[BatchTimes] = []

    async def main() -> list[bytes]:
        batcher = Batcher(pool, asyncio.get_running_loop(), 1 << 20, lambda model, times: rounds.append(times))
        pool.submit(gate.wait, 10)
        futures = [batcher.submit(on_device, body, JSON_CODEC, device) for body in bodies]
        gate.set()
        return await asyncio.gather(*futures)

    try:
        answers = asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        pool.shutdown()
    # one forward: one input tensor copied in, one output copied out
    assert (device.counts.host_to_device - before[0], device.counts.device_to_host - before[1]) == (1, 1)
    [times] = rounds
    assert times.rows == [6] and times.requests == 3
    assert times.queue_ns > 0 and times.input_ns > 0 and times.output_ns > 0
    assert times.infer_ns == 3 * times.forwards[0][2], "each request is charged its batch's forward"
    for answer, given in zip(answers, inputs, strict=True):
        got = np.asarray(orjson.loads(answer)["outputs"][0]["data"], dtype=np.float32)
        want = run_reference(zoo, name, [a for _, _, a in given])[0]
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-5)


def test_an_idle_queue_keeps_no_model_alive(zoo: Path) -> None:
    """Once answered, the batcher holds no reference to the model: an evicted
    model's memory (its mapping, its device copy) is freed when its leases go."""
    held = [_model(zoo, "mlp-00")]
    body = orjson.dumps(infer_body(sample_inputs(zoo, "mlp-00", 1, 0)))
    alive = weakref.ref(held[0].module)
    pool = ThreadPoolExecutor(1)

    async def main() -> None:
        batcher = Batcher(pool, asyncio.get_running_loop(), 1 << 20)
        await batcher.submit(held[0], body, JSON_CODEC)
        pool.submit(lambda: None).result(10)  # the drain has seen its queue empty and ended
        held.clear()
        gc.collect()
        assert alive() is None

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        pool.shutdown()
