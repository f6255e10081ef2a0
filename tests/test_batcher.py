"""Dynamic batching: queued requests run as one forward, answers split back correctly."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import pytest

from protocol.errors import BadRequest
from tests.reference import infer_body, run_reference, sample_inputs
from worker.batcher import Batcher
from worker.loader import load_module
from worker.repository import Repository
from worker.runner import LoadedModel


def _model(zoo: Path, name: str) -> LoadedModel:
    repo = Repository(zoo)
    repo.scan()
    entry = repo.resolve(name)
    assert entry.config is not None
    return LoadedModel(entry.name, entry.version, entry.config, load_module(entry))


def _run_gated(model: LoadedModel, bodies: list[bytes]) -> tuple[list[int], list[bytes | BaseException]]:
    """Queue every body while the pool's only thread is held, then let it go:
    the batcher must find them all queued at once."""
    pool = ThreadPoolExecutor(1)
    gate = threading.Event()
    batches: list[int] = []

    async def main() -> list[bytes | BaseException]:
        batcher = Batcher(pool, asyncio.get_running_loop(), 1 << 20, lambda name, rows: batches.append(rows))
        pool.submit(gate.wait, 10)
        futures = [batcher.submit(model, body) for body in bodies]
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
