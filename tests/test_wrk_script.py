"""The throughput benchmark's wrk script: every request unlike any other, in one
run and across runs (else the balancer's cache answers what an earlier run
asked, and a "no cache hit" row measures hits)."""

from __future__ import annotations

import re

import numpy as np
import orjson
import pytest

from loadgen.wrk import varied_script


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
