"""Bad input gets the right 4xx with a V2 error body, and the service stays healthy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.harness import Server, request
from tests.reference import infer_body, sample_inputs


def _good() -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}


def _with(**changes: Any) -> bytes:
    body = _good()
    body["inputs"][0].update(changes)
    return orjson.dumps(body)


CASES: list[tuple[str, str, bytes, int, str]] = [
    # (case, model, body, status, words the error must contain)
    ("malformed json", "mlp-00", b'{"inputs": [', 400, "malformed JSON"),
    ("not an object", "mlp-00", b"[1, 2, 3]", 400, "object"),
    ("empty body", "mlp-00", b"", 400, "malformed JSON"),
    ("unknown model", "no-such-model", orjson.dumps(_good()), 404, "unknown model"),
    ("name with dots", "..", orjson.dumps(_good()), 400, "invalid model name"),
    ("name with encoded slash", "a%2F..%2Fb", orjson.dumps(_good()), 400, "invalid model name"),
    ("wrong shape", "mlp-00", _with(shape=[1, 32], data=[0.5] * 32), 400, "shape"),
    ("wrong rank", "mlp-00", _with(shape=[64], data=[0.5] * 64), 400, "shape"),
    ("wrong datatype", "mlp-00", _with(datatype="FP64"), 400, "datatype"),
    ("unknown datatype", "mlp-00", _with(datatype="FP128"), 400, "datatype"),
    ("strings in FP32", "mlp-00", _with(data=["a"] * 64), 400, "datatype"),
    (
        "fractions in INT64",
        "transformer-02",
        orjson.dumps({"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 32], "data": [1.5] * 32}]}),
        400,
        "datatype",
    ),
    (
        "token id out of range",
        "transformer-02",
        orjson.dumps({"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 32], "data": [10**6] * 32}]}),
        400,
        "token ids",
    ),
    ("data shorter than shape", "mlp-00", _with(data=[0.5] * 63), 400, "elements"),
    ("ragged data", "mlp-00", _with(shape=[2, 2], data=[[1.0, 2.0], [3.0]]), 400, "ragged"),
    ("negative dimension", "mlp-00", _with(shape=[1, -64]), 400, "shape"),
    (
        "missing data",
        "mlp-00",
        orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64]}]}),
        400,
        "data",
    ),
    ("missing input", "mlp-00", _with(name="other"), 400, "missing input"),
    ("no inputs", "mlp-00", b'{"inputs": []}', 400, "inputs"),
    ("id not a string", "mlp-00", orjson.dumps({**_good(), "id": 5}), 400, "id"),
    ("unknown output", "mlp-00", orjson.dumps({**_good(), "outputs": [{"name": "nope"}]}), 400, "output"),
    ("batch over the limit", "mlp-00", _with(shape=[65, 64], data=[0.5] * 65 * 64), 400, "batch"),
    ("huge declared shape", "mlp-00", _with(shape=[1 << 20, 1 << 20]), 413, "elements"),
]


def _targets(balancer: Server, workers: list[Server]) -> list[Server]:
    return [balancer, workers[0]]


@pytest.mark.parametrize(("case", "model", "body", "status", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_4xx(
    balancer: Server, workers: list[Server], case: str, model: str, body: bytes, status: int, words: str
) -> None:
    for target in _targets(balancer, workers):
        resp = request(target.url, "POST", f"/v2/models/{model}/infer", body)
        assert resp.status == status, (target.url, resp.body)
        assert resp.headers["content-type"].startswith("application/json")
        error = resp.json()["error"]
        assert words.lower() in error.lower()
        assert "Traceback" not in error and "/" not in error.replace("/v2", "")


_HEADER = b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"parameters":{"binary_data_size":256}}]}'
BINARY_CASES = [
    ("header longer than the body", _HEADER + bytes(256), len(_HEADER) + 300, "body has"),
    ("binary data left over", _HEADER + bytes(260), len(_HEADER), "belong to no tensor"),
    ("binary data too short", _HEADER + bytes(200), len(_HEADER), "runs past"),
    ("size that is not the shape's", _HEADER.replace(b"256", b"128") + bytes(128), len(_HEADER), "needs 256"),
    ("negative size", _HEADER.replace(b"256", b"-4"), len(_HEADER) - 1, "non-negative"),
    ("header not JSON", b"{nope" + bytes(256), 5, "malformed"),
]


@pytest.mark.parametrize(("case", "body", "length", "words"), BINARY_CASES, ids=[c[0] for c in BINARY_CASES])
def test_binary_lengths_that_lie_are_a_clear_400(
    balancer: Server, workers: list[Server], case: str, body: bytes, length: int, words: str
) -> None:
    for target in _targets(balancer, workers):
        resp = request(
            target.url, "POST", "/v2/models/mlp-00/infer", body,
            {"Inference-Header-Content-Length": str(length), "Content-Type": "application/octet-stream"},
        )  # fmt: skip
        assert resp.status == 400, (target.url, resp.body)
        assert words in resp.json()["error"]


def test_a_true_binary_request_is_served(balancer: Server, workers: list[Server]) -> None:
    body = _HEADER + bytes(256)
    for target in _targets(balancer, workers):
        headers = {"Inference-Header-Content-Length": str(len(_HEADER)), "Content-Type": "application/octet-stream"}
        resp = request(target.url, "POST", "/v2/models/mlp-00/infer", body, headers)
        assert resp.status == 200, resp.body
        assert resp.json()["outputs"][0]["name"] == "logits"


def test_service_healthy_after_bad_input(balancer: Server, workers: list[Server], zoo: Path) -> None:
    for case in CASES:
        request(balancer.url, "POST", f"/v2/models/{case[1]}/infer", case[2])
    for target in [balancer, *workers]:
        assert request(target.url, "GET", "/v2/health/ready").status == 200
    body = infer_body(sample_inputs(zoo, "mlp-00", 1, 7))
    assert request(balancer.url, "POST", "/v2/models/mlp-00/infer", body).status == 200


def test_unknown_route_and_method_are_json_errors(balancer: Server) -> None:
    resp = request(balancer.url, "GET", "/v2/nothing-here")
    assert resp.status == 404 and "error" in resp.json()
    resp = request(balancer.url, "GET", "/v2/models/mlp-00/infer")
    assert resp.status == 405 and "error" in resp.json()
