"""The throughput benchmark's wrk script: every request unlike any other, in one
run and across runs (else the balancer's cache answers what an earlier run
asked, and a "no cache hit" row measures hits); and the bench's count of the
answers that did not come from a worker, which says whether that held."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import orjson
import pytest

from cli.bench.throughput import answered_without_a_worker
from loadgen.wrk import varied_script
from tests.harness import Server, request
from tests.reference import infer_body, sample_inputs


def _bodies(script: str, counts: range) -> list[bytes]:
    """The bodies the script's ``request`` builds for these counter values (its
    Lua string concatenation, done here: no Lua interpreter needed)."""
    head = re.search(r"local head = '(.*)'\n", script)
    tail = re.search(r"local tail = '(.*)'\n", script)
    assert head and tail and 'string.format("%d", counter % 16777216)' in script
    return [(head.group(1) + str(n % (1 << 24)) + tail.group(1)).encode() for n in counts]


def _tensor(body: bytes, width: int) -> bytes:
    """The input as the balancer keys it: FP32 values, little-endian."""
    request = orjson.loads(body)
    (tensor,) = request["inputs"]
    assert tensor["shape"] == [1, width] and tensor["datatype"] == "FP32" and len(tensor["data"]) == width
    return np.asarray(tensor["data"], dtype="<f4").tobytes()


def test_no_two_requests_of_a_run_or_of_two_runs_are_the_same_tensor() -> None:
    first, second = varied_script(["a", "b"], "input", 64), varied_script(["a", "b"], "input", 64)
    assert first != second, "each script draws its own seed"
    tensors = [_tensor(b, 64) for script in (first, second) for b in _bodies(script, range(1, 5001))]
    assert len(set(tensors)) == len(tensors)


def test_a_given_seed_makes_the_same_script_and_a_narrow_input_is_refused() -> None:
    assert varied_script(["a"], "x", 8, seed=7) == varied_script(["a"], "x", 8, seed=7)
    assert "math.randomseed(7)" in varied_script(["a"], "x", 8, seed=7)
    with pytest.raises(ValueError):
        varied_script(["a"], "x", 1)


def test_the_bench_counts_the_answers_that_came_without_a_worker(balancer: Server, zoo: Path) -> None:
    """The column that says a row measured workers: hits and coalesced answers, from /metrics."""
    before = answered_without_a_worker(balancer.url)
    body = infer_body(sample_inputs(zoo, "mlp-00", 1, seed=20261201))
    for expected in ("miss", "hit", "hit"):
        resp = request(balancer.url, "POST", "/v2/models/mlp-00/infer", body)
        assert resp.status == 200 and resp.headers["x-cache"] == expected
    assert answered_without_a_worker(balancer.url) - before == 2
    assert answered_without_a_worker("http://127.0.0.1:1") == 0  # nothing to read: nothing claimed
