"""The balancer's hop to a worker in the binary tensor extension: a JSON request
whose tensors the balancer packed for its cache key goes on as raw bytes, so the
worker reads them without parsing numbers. What travels must be the same request:
decoded, it gives the tensors, ids, parameters and requested outputs the JSON
gave. (End to end, every test through the balancer runs over this hop.)"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
import pytest

from balancer.caching import CacheRules, binary_hop
from balancer.index import ModelInfo
from balancer.plan import InferCall
from cache.keys import KeyScope
from cache.response_cache import ResponseCache
from protocol.json_codec import decode_binary_request, decode_infer_request

SCOPE = KeyScope("m", "1", "w" * 64)
INFO = ModelInfo("m", frozenset({"1"}), "1", deterministic=True, cacheable=True, scopes={"1": SCOPE})


def _plan(body: dict[str, Any], binary: bool = True, cache_control: str | None = None) -> Any:
    rules = CacheRules(ResponseCache(1 << 20), upstream_binary=binary)
    call = InferCall("m", None, orjson.dumps(body), "application/json", cache_control)
    return rules.plan(INFO, "1", call, time.perf_counter())


def _request(datatype: str, values: list[Any], shape: list[int]) -> dict[str, Any]:
    return {
        "id": "r-7",
        "parameters": {"priority": 2},
        "inputs": [
            {"name": "a", "datatype": datatype, "shape": shape, "data": values, "parameters": {"tag": "x"}},
            {"name": "b", "datatype": "INT64", "shape": [2], "data": [-(2**62), 2**62]},
        ],
        "outputs": [{"name": "y"}],
    }


@pytest.mark.parametrize(
    ("datatype", "values", "shape"),
    [
        ("FP32", [[0.1, 1, -2.5e-3], [3.4e38, 0, 7]], [2, 3]),
        ("FP16", [0.5, 1.0, -2.0], [1, 3]),
        ("BOOL", [True, False, True, True], [4]),
        ("UINT8", [0, 255, 7], [3]),
        ("INT32", [-(2**31), 2**31 - 1], [2]),
        ("FP64", [1e300, -1e-300], [2]),
    ],
)
def test_the_binary_hop_carries_the_same_request(datatype: str, values: list[Any], shape: list[int]) -> None:
    body = _request(datatype, values, shape)
    for cache_control in (None, "no-cache, no-store"):  # keyed, and checked only: both go binary
        plan = _plan(body, cache_control=cache_control)
        assert plan.typed is not None
        packed = binary_hop(*plan.typed)
        assert packed is not None
        sent = decode_binary_request(packed)
        given = decode_infer_request(orjson.dumps(body))
        assert sent.id == given.id == "r-7"
        assert sent.parameters == given.parameters
        assert [o.name for o in sent.outputs or []] == ["y"]
        for got, want in zip(sent.inputs, given.inputs, strict=True):
            assert (got.name, got.datatype, got.shape) == (want.name, want.datatype, want.shape)
            assert got.data.dtype == want.data.dtype
            np.testing.assert_array_equal(got.data, want.data)
        assert (sent.inputs[0].parameters or {}).get("tag") == "x"


def test_what_stays_json() -> None:
    body = _request("FP32", [1.0, 2.0], [2])
    assert _plan(body, binary=False).typed is None, "--upstream-encoding json"
    text = {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1], "data": ["héllo"]}]}
    plan = _plan(text)
    assert plan.typed is None or binary_hop(*plan.typed) is None, "BYTES go as the caller wrote them"
    asks_binary = {**body, "parameters": {"binary_data_output": True}}
    assert _plan(asks_binary).typed is None, "an answer in binary: the request goes as it came"
