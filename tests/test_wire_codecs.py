"""The binary extension and the gRPC messages as pure logic: every datatype
survives each rendering exactly, lengths that lie are refused, one request has
one key whatever its encoding, and cached binary entries are checked as data."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.caching import derive_key
from balancer.plan import InferCall
from balancer.renderings import GRPC_RENDERING, JSON_RENDERING, Rendering, render
from cache.entry import BINARY, CachedAnswer, InvalidEntry
from cache.keys import KeyScope, key_request, typed_key
from protocol import binary_codec, grpc_messages
from protocol.arrays import array_from_raw, raw_from_array
from protocol.datatypes import NUMPY_DTYPES
from protocol.errors import BadRequest, PayloadTooLarge
from protocol.grpc_codec import decode_grpc_request, request_message
from protocol.grpc_service import inference_pb2 as pb
from protocol.json_codec import decode_binary_request, encode_binary_request, encode_infer_request
from protocol.types import InferRequest, RawResponse, RawTensor, Tensor

DATATYPES = sorted(NUMPY_DTYPES)
SCOPE = KeyScope("m", "1", "w0")


def _values(datatype: str, draw: Any) -> np.ndarray:
    """Four elements of ``datatype`` covering its range's edges."""
    if datatype == "BYTES":
        items = draw(st.lists(st.text(max_size=5), min_size=4, max_size=4))
        arr = np.empty(4, dtype=object)
        arr[:] = [s.encode() for s in items]
        return arr
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BOOL":
        return np.array(draw(st.lists(st.booleans(), min_size=4, max_size=4)), dtype=dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        ints = st.integers(int(info.min), int(info.max))
        return np.array(draw(st.lists(ints, min_size=4, max_size=4)), dtype=dtype)
    width = 16 if datatype == "FP16" else 32 if datatype == "FP32" else 64
    floats = st.floats(allow_nan=False, allow_infinity=False, width=width)
    return np.array(draw(st.lists(floats, min_size=4, max_size=4)), dtype=dtype)


@settings(max_examples=40)
@given(st.sampled_from(DATATYPES), st.data())
def test_every_datatype_survives_json_binary_and_protobuf_renderings(datatype: str, data: st.DataObject) -> None:
    arr = _values(datatype, data.draw).reshape(1, 4)
    raw = RawTensor("output", datatype, (1, 4), raw_from_array(datatype, arr))
    resp = RawResponse("m", (raw,), "1")
    as_json = binary_codec.response_from_json(binary_codec.render_json(resp))
    as_binary = binary_codec.response_from_binary(*binary_codec.render_binary(resp, binary_codec.BINARY_OUTPUTS))
    as_proto = grpc_messages.response_from_proto(pb.ModelInferResponse.FromString(grpc_messages.render_proto(resp)))
    for back in (as_json, as_binary, as_proto):
        assert back == resp, datatype
    assert np.array_equal(array_from_raw(datatype, (1, 4), raw.data, "output"), arr)


def _binary_body(request: dict[str, Any], raws: list[bytes]) -> tuple[bytes, int]:
    for tensor, raw in zip(request["inputs"], raws, strict=True):
        tensor.pop("data", None)
        tensor["parameters"] = {"binary_data_size": len(raw)}
    header = __import__("orjson").dumps(request)
    return header + b"".join(raws), len(header)


def test_one_request_has_one_key_over_json_binary_and_grpc_typed_or_raw() -> None:
    x = np.array([[0.5, -1.0, 3.25, 8.0]], dtype=np.float32)
    t = np.array([[b"ab", b"", b"c", b"xyz"]], dtype=object)
    request = InferRequest([Tensor("x", "FP32", (1, 4), x), Tensor("t", "BYTES", (1, 4), t)], id="r1")
    as_json = encode_infer_request(request)
    json_key = derive_json_key(as_json)
    body, length = encode_binary_request(request)
    binary_call = InferCall("m", None, body, BINARY, encoding="binary", header_length=length)
    raw_msg = request_message(request, "m")
    typed_msg = pb.ModelInferRequest(model_name="m", id="r1")
    typed_msg.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend(x.ravel().tolist())
    typed_msg.inputs.add(name="t", datatype="BYTES", shape=[1, 4]).contents.bytes_contents.extend(t.ravel().tolist())
    keys = {json_key}
    for call in (
        binary_call,
        InferCall("m", None, b"", "application/grpc", encoding="grpc", message=raw_msg),
        InferCall("m", None, b"", "application/grpc", encoding="grpc", message=typed_msg),
    ):
        key, request_id, _ = derive_key(call, SCOPE)
        keys.add(key)
        assert request_id == "r1"
    assert len(keys) == 1


def derive_json_key(body: bytes) -> str:
    return typed_key(SCOPE, key_request(__import__("orjson").loads(body)))


def test_the_rendering_follows_the_request() -> None:
    request = InferRequest([Tensor("x", "INT8", (1, 2), np.array([[1, 2]], dtype=np.int8))])
    body, length = encode_binary_request(request)  # asks for binary outputs
    call = InferCall("m", None, body, BINARY, encoding="binary", header_length=length)
    rendering = derive_key(call, SCOPE)[2]
    assert rendering.kind == "rest" and rendering.outputs.binary("anything")
    msg = request_message(request, "m")
    assert derive_key(InferCall("m", None, b"", "", encoding="grpc", message=msg), SCOPE)[2] == GRPC_RENDERING


def _one(datatype: str, shape: list[int], size: Any, extra: str = "") -> bytes:
    params = '"parameters":{"binary_data_size":%s}' % (size if isinstance(size, int) else f'"{size}"')
    return b'{"inputs":[{"name":"x","datatype":"%s","shape":%s,%s%s}]}' % (
        datatype.encode(),
        str(shape).replace(" ", "").encode(),
        extra.encode(),
        params.encode(),
    )


@pytest.mark.parametrize(
    ("body", "length", "words"),
    [
        (b'{"inputs":[]}', 99, "body has"),
        (_one("INT32", [2], 8) + bytes(9), 0, "belong to no tensor"),
        (_one("INT32", [2], 8) + bytes(7), 0, "runs past"),
        (_one("INT32", [3], 8) + bytes(8), 0, "needs 12"),
        (_one("INT32", [2], "8") + bytes(8), 0, "non-negative"),
        (_one("BYTES", [1], 6) + struct.pack("<I", 9) + b"ab", 0, "runs past its data"),
        (_one("BYTES", [2], 6) + struct.pack("<I", 2) + b"ab", 0, "needs 2"),
        (_one("INT32", [2], 8, '"data":[1,2],') + bytes(8), 0, "both"),
    ],
)
def test_binary_lengths_that_lie_are_refused_on_both_sides(body: bytes, length: int, words: str) -> None:
    length = length or body.index(b"}]}") + 3
    header, binary = (None, None)
    with pytest.raises(BadRequest, match=words):
        header, binary = binary_codec.split(body, length)
        key_request(header, binary)
    with pytest.raises(BadRequest, match=words):
        decode_binary_request((body, length))


def test_element_limits_hold_for_binary_and_grpc() -> None:
    big = InferRequest([Tensor("x", "UINT8", (1, 64), np.zeros((1, 64), dtype=np.uint8))])
    body, length = encode_binary_request(big)
    with pytest.raises(PayloadTooLarge):
        decode_binary_request((body, length), 10)
    with pytest.raises(PayloadTooLarge):
        decode_grpc_request(request_message(big, "m").SerializeToString(), 10)


def test_grpc_raw_contents_that_lie_are_refused() -> None:
    msg = request_message(InferRequest([Tensor("x", "FP32", (1, 4), np.zeros((1, 4), np.float32))]), "m")
    msg.raw_input_contents[0] = bytes(12)
    with pytest.raises(BadRequest, match="needs 16"):
        decode_grpc_request(msg.SerializeToString())
    msg.raw_input_contents.append(b"")
    with pytest.raises(BadRequest, match="2 raw contents for 1"):
        decode_grpc_request(msg.SerializeToString())
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="x", datatype="INT8", shape=[2]).contents.int_contents.extend([1, 300])
    with pytest.raises(BadRequest, match="out of range"):
        decode_grpc_request(typed)
    with pytest.raises(BadRequest, match="malformed"):
        decode_grpc_request(b"\xff\xff\xff")


def test_the_model_is_read_from_the_message_headers_alone() -> None:
    msg = request_message(InferRequest([Tensor("x", "FP32", (1, 4), np.ones((1, 4), np.float32))]), "mlp-00", "3")
    assert grpc_messages.infer_target(msg.SerializeToString()) == ("mlp-00", "3")
    with pytest.raises(BadRequest):
        grpc_messages.infer_target(msg.SerializeToString()[:-3])


def test_an_id_spliced_into_protobuf_bytes_parses_back() -> None:
    resp = RawResponse("m", (RawTensor("y", "INT32", (1,), struct.pack("<i", 7)),), "1")
    body = grpc_messages.render_proto(resp)
    msg = pb.ModelInferResponse.FromString(grpc_messages.splice_proto_id(body, "req-é"))
    assert msg.id == "req-é" and msg.model_name == "m"
    assert grpc_messages.strip_proto_id(grpc_messages.splice_proto_id(body, "x")) == (body, "x")


def _binary_entry() -> CachedAnswer:
    resp = RawResponse("m", (RawTensor("y", "FP32", (1, 2), struct.pack("<2f", 0.1, 2.5)),), "1")
    body, length = binary_codec.render_binary(resp, binary_codec.BINARY_OUTPUTS)
    return CachedAnswer(body, "w:1", BINARY, header_length=length)


def test_one_entry_renders_every_encoding_and_memoises_each() -> None:
    entry = _binary_entry()
    as_json = render(entry, JSON_RENDERING, "a")
    assert as_json.header_length is None and as_json.body.startswith(b'{"id":"a","model_name":"m"')
    again = render(entry, JSON_RENDERING, "a")
    assert again.body == as_json.body  # byte-identical within one encoding
    assert render(entry, Rendering("rest", binary_codec.BINARY_OUTPUTS), None).body == entry.body  # its own form
    proto = pb.ModelInferResponse.FromString(render(entry, GRPC_RENDERING, "g").body)
    assert proto.id == "g" and proto.raw_output_contents[0] == struct.pack("<2f", 0.1, 2.5)
    assert set(entry.renderings) == {JSON_RENDERING, GRPC_RENDERING, Rendering("rest", binary_codec.BINARY_OUTPUTS)}


def test_binary_entries_from_redis_are_checked_as_data() -> None:
    entry = _binary_entry()
    assert CachedAnswer.from_bytes(entry.to_bytes()) == entry
    raw = entry.to_bytes()
    for bad in (raw[:-1], raw + b"!", raw.replace(b'"binary_data_size":8', b'"binary_data_size":9')):
        with pytest.raises(InvalidEntry):
            CachedAnswer.from_bytes(bad)
    with pytest.raises(InvalidEntry):
        CachedAnswer(entry.body, "w:1", BINARY)  # a binary body without its header length
