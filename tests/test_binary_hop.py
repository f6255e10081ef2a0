"""The balancer's hop to a worker in the binary tensor extension: a JSON request
whose tensors the balancer packed for its cache key goes on as raw bytes, so the
worker reads them without parsing numbers. What travels must be the same request:
decoded, it gives the tensors, ids, parameters and requested outputs the JSON
gave. The hop is off by default (``--upstream-encoding json``: measured slower end
to end on two cores); the end-to-end tests here turn it on."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from balancer.caching import CacheRules, binary_hop
from balancer.index import ModelInfo
from balancer.plan import InferCall
from cache.keys import KeyScope
from cache.response_cache import ResponseCache
from protocol.binary_codec import CONTENT_TYPE, HEADER
from protocol.json_codec import decode_binary_request, decode_infer_request
from tests.fake_worker import FakeWorker
from tests.harness import request, start_balancer, start_worker
from tests.reference import infer_body, sample_inputs

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


def test_the_balancer_forwards_json_as_it_came_unless_asked_to_pack_it(logdir: Path) -> None:
    """What a worker receives for the same JSON request: the body as it came by default,
    the binary extension (with its header length) under ``--upstream-encoding binary``."""
    body = orjson.dumps(_request("FP32", [1.0, 2.0], [2]))
    for flags, content_type in (((), "application/json"), (("--upstream-encoding", "binary"), CONTENT_TYPE)):
        fake = FakeWorker("w1").start()
        balancer = start_balancer([fake], logdir, *flags)  # type: ignore[list-item]
        try:
            balancer.wait_ready()
            assert request(balancer.url, "POST", "/v2/models/m/infer", body).status == 200
            (headers,) = [h for _, path, h in fake.seen if path.endswith("/infer")]
            assert headers["Content-Type"] == content_type
            assert (HEADER in headers) == bool(flags)
        finally:
            balancer.proc.stop()
            fake.stop()


def test_a_real_worker_answers_the_packed_request_as_it_answers_the_json_one(zoo: Path, logdir: Path) -> None:
    worker = start_worker(zoo, logdir).wait_ready()
    balancer = start_balancer([worker], logdir, "--upstream-encoding", "binary").wait_ready()
    try:
        for model in ("mlp-00", "logreg-03"):
            body = orjson.dumps(infer_body(sample_inputs(zoo, model, 2, 11), request_id="q-1"))
            direct = request(worker.url, "POST", f"/v2/models/{model}/infer", body)
            through = request(balancer.url, "POST", f"/v2/models/{model}/infer", body, {"Cache-Control": "no-cache"})
            assert direct.status == through.status == 200
            assert through.json()["id"] == "q-1"
            assert through.json()["outputs"] == direct.json()["outputs"]
    finally:
        balancer.proc.stop()
        worker.proc.stop()
