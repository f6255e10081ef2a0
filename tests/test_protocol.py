"""The V2 JSON codec: round trips for every datatype, strict decoding, id splicing."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.datatypes import NUMPY_DTYPES
from protocol.errors import BadRequest, PayloadTooLarge
from protocol.json_body import splice_id, strip_id
from protocol.json_codec import (
    decode_infer_request,
    decode_infer_response,
    encode_infer_request,
    encode_infer_response,
)
from protocol.names import is_valid_name
from protocol.types import InferRequest, InferResponse, RequestedOutput, Tensor

NUMERIC = [d for d in NUMPY_DTYPES if d not in ("BYTES", "BOOL")]


def _values(datatype: str) -> st.SearchStrategy[object]:
    if datatype == "BOOL":
        return st.booleans()
    if datatype == "BYTES":
        return st.text(max_size=8)
    dtype = NUMPY_DTYPES[datatype]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return st.integers(int(info.min), int(info.max))
    width = {"FP16": 16, "FP32": 32, "FP64": 64}[datatype]
    return st.floats(allow_nan=False, allow_infinity=False, width=width)  # type: ignore[arg-type]


@st.composite
def tensors(draw: st.DrawFn) -> Tensor:
    datatype = draw(st.sampled_from(sorted(NUMPY_DTYPES)))
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    values = draw(st.lists(_values(datatype), min_size=math.prod(shape), max_size=math.prod(shape)))
    if datatype == "BYTES":
        arr = np.empty(len(values), dtype=object)
        arr[:] = [str(v).encode() for v in values]
    else:
        arr = np.asarray(values, dtype=NUMPY_DTYPES[datatype])
    return Tensor("t", datatype, shape, arr.reshape(shape))


@given(tensors(), st.one_of(st.none(), st.text(max_size=10)))
def test_request_round_trip(tensor: Tensor, request_id: str | None) -> None:
    request = InferRequest([tensor], id=request_id, outputs=[RequestedOutput("out")], parameters={"p": 1})
    decoded = decode_infer_request(encode_infer_request(request))
    assert decoded.id == request_id
    assert decoded.parameters == {"p": 1}
    assert decoded.outputs == [RequestedOutput("out")]
    (got,) = decoded.inputs
    assert (got.name, got.datatype, got.shape) == (tensor.name, tensor.datatype, tensor.shape)
    assert got.data.dtype == NUMPY_DTYPES[tensor.datatype]
    np.testing.assert_array_equal(got.data, tensor.data)


@given(tensors())
def test_response_round_trip(tensor: Tensor) -> None:
    body = encode_infer_response(InferResponse("m", [tensor], model_version="2", id="x"))
    decoded = decode_infer_response(body)
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("m", "2", "x")
    np.testing.assert_array_equal(decoded.outputs[0].data, tensor.data)


def test_nested_data_is_accepted_and_reshaped() -> None:
    body = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]}
    (tensor,) = decode_infer_request(orjson.dumps(body)).inputs
    assert tensor.data.tolist() == [[1, 2], [3, 4]] and tensor.data.dtype == np.int32


@pytest.mark.parametrize(
    ("datatype", "data", "words"),
    [
        ("INT8", [300], "out of range"),
        ("UINT8", [-1], "out of range"),
        ("INT64", [2.0**70], "datatype"),
        ("BOOL", [1], "datatype"),
        ("FP32", [None], "datatype"),
        ("FP32", ["1.5"], "datatype"),
        ("BYTES", [1], "strings"),
        ("FP32", {"a": 1}, "list"),
    ],
)
def test_decoding_rejects_what_numpy_would_let_slip(datatype: str, data: object, words: str) -> None:
    body = {"inputs": [{"name": "x", "datatype": datatype, "shape": [1], "data": data}]}
    with pytest.raises(BadRequest, match=words):
        decode_infer_request(orjson.dumps(body))


def test_64_bit_integers_decode_exactly() -> None:
    """numpy's inference turns [0, 2**64 - 1] into float64; the codec must not."""
    for datatype, values in (("UINT64", [0, 2**64 - 1]), ("INT64", [-(2**63), 2**63 - 1, 0])):
        body = {"inputs": [{"name": "x", "datatype": datatype, "shape": [len(values)], "data": values}]}
        (tensor,) = decode_infer_request(orjson.dumps(body)).inputs
        assert tensor.data.tolist() == values
    with pytest.raises(BadRequest, match="datatype"):
        body = {"inputs": [{"name": "x", "datatype": "UINT64", "shape": [2], "data": [2**64 - 1, 0.5]}]}
        decode_infer_request(orjson.dumps(body))


def test_element_limit_is_checked_before_reading_data() -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1 << 40], "data": []}]}
    with pytest.raises(PayloadTooLarge):
        decode_infer_request(orjson.dumps(body))


def test_duplicate_input_names_are_rejected() -> None:
    tensor = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}
    with pytest.raises(BadRequest, match="twice"):
        decode_infer_request(orjson.dumps({"inputs": [tensor, tensor]}))


@given(st.one_of(st.none(), st.text(max_size=20)))
def test_strip_then_splice_restores_the_body(request_id: str | None) -> None:
    tensor = Tensor("y", "FP32", (2,), np.array([0.1, -3.25], dtype=np.float32))
    body = encode_infer_response(InferResponse("m", [tensor], "1", request_id))
    stripped = strip_id(body, request_id)
    assert "id" not in orjson.loads(stripped)
    assert splice_id(stripped, request_id) == body


def test_strip_id_of_a_foreign_body_reorders_nothing_else() -> None:
    body = b'{"model_name":"m","id":"abc","outputs":[]}'
    assert strip_id(body, "abc") == b'{"model_name":"m","outputs":[]}'


@pytest.mark.parametrize(
    ("name", "ok"),
    [("mlp-00", True), ("a.b_c-1", True), ("..", False), ("a/b", False), (".hidden", False), ("a\x00", False),
     ("x" * 129, False), ("", False), ("a..b", False)],
)  # fmt: skip
def test_model_name_rule(name: str, ok: bool) -> None:
    assert is_valid_name(name) is ok
