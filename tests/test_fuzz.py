"""Fuzzing (hypothesis, bounded examples): the codecs, the cache keys, the small
parsers and the HTTP server take any bytes and either answer or refuse with a
``ProtocolError`` (a 4xx); nothing else escapes. Inputs are random bytes and
near-valid requests with one part mutated, which reach deeper than noise."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache.keys import KeyScope, key_from_json_body, key_request
from common.http_server import HttpLimits, HttpServer
from common.rest import render_error
from protocol import binary_codec, grpc_messages
from protocol.deadline import parse_request_timeout
from protocol.errors import ProtocolError
from protocol.grpc_service import inference_pb2 as pb
from protocol.json_codec import decode_binary_request, decode_infer_request
from protocol.names import check_name, check_version
from tests.http_wire import routes

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
SCOPE = KeyScope("m", "1", "sha")
DATATYPES = ["BOOL", "UINT8", "INT8", "INT32", "INT64", "UINT64", "FP16", "FP32", "FP64", "BYTES", "FP8", "", "fp32"]

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=False), st.text(max_size=8)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
shapes = st.one_of(st.lists(st.integers(-2, 5), max_size=4), json_value)
tensor = st.fixed_dictionaries(
    {"name": st.one_of(st.just("input"), st.text(max_size=4), json_leaf)},
    optional={
        "datatype": st.one_of(st.sampled_from(DATATYPES), json_leaf),
        "shape": shapes,
        "data": st.one_of(st.lists(json_leaf, max_size=12), st.lists(st.lists(json_leaf, max_size=3), max_size=4)),
        "parameters": st.one_of(
            st.fixed_dictionaries({"binary_data_size": st.one_of(st.integers(-4, 64), json_leaf)}), json_value
        ),
    },
)
request_object = st.fixed_dictionaries(
    {},
    optional={
        "id": json_leaf,
        "inputs": st.one_of(st.lists(tensor, max_size=3), json_value),
        "outputs": st.one_of(st.lists(st.fixed_dictionaries({"name": json_leaf}), max_size=2), json_value),
        "parameters": st.one_of(st.fixed_dictionaries({"binary_data_output": json_leaf}), json_value),
    },
)
bodies = st.one_of(st.binary(max_size=200), request_object.map(lambda o: json.dumps(o).encode()))


def refused_or_answered(call: Any, *args: Any) -> None:
    try:
        call(*args)
    except ProtocolError as exc:
        assert 400 <= exc.status < 500, exc


@given(bodies)
@FUZZ
def test_json_codec_and_key_take_any_body(body: bytes) -> None:
    refused_or_answered(decode_infer_request, body)
    refused_or_answered(key_from_json_body, body, SCOPE)


@given(request_object, st.binary(max_size=80), st.integers(-1, 400))
@FUZZ
def test_binary_extension_takes_any_header_and_lengths(header: dict[str, Any], data: bytes, extra: int) -> None:
    head = json.dumps(header).encode()  # stdlib: integers past 64 bits and Infinity included
    body = head + data
    for length in (len(head), max(0, len(head) + extra), extra):
        if length < 0:
            continue
        refused_or_answered(decode_binary_request, (body, length))

        def keyed(b: bytes, n: int) -> None:
            obj, binary = binary_codec.split(b, n)
            key_request(obj, binary)

        refused_or_answered(keyed, body, length)


grpc_tensor = st.builds(
    dict,
    name=st.text(max_size=4),
    datatype=st.sampled_from(DATATYPES),
    shape=st.lists(st.integers(-3, 6), max_size=4),
    contents=st.fixed_dictionaries(
        {},
        optional={
            "fp32_contents": st.lists(st.floats(width=32, allow_nan=False), max_size=8),
            "int_contents": st.lists(st.integers(-(1 << 31), (1 << 31) - 1), max_size=8),
            "int64_contents": st.lists(st.integers(-(1 << 63), (1 << 63) - 1), max_size=8),
            "bool_contents": st.lists(st.booleans(), max_size=8),
            "bytes_contents": st.lists(st.binary(max_size=4), max_size=4),
        },
    ),
)


@given(
    st.lists(grpc_tensor, max_size=3),
    st.lists(st.binary(max_size=40), max_size=3),
    st.text(max_size=6),
    st.binary(max_size=40),
)
@FUZZ
def test_grpc_messages_take_any_message_and_any_bytes(
    tensors: list[dict[str, Any]], raws: list[bytes], model: str, noise: bytes
) -> None:
    msg = pb.ModelInferRequest(model_name=model, raw_input_contents=raws)
    for t in tensors:
        added = msg.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        for field, values in t["contents"].items():
            getattr(added.contents, field).extend(values)
    for payload in (msg.SerializeToString(), noise, msg.SerializeToString()[: len(noise)]):

        def read(p: bytes) -> None:
            parsed = grpc_messages.parse_request(p)
            grpc_messages.request_inputs(parsed)
            grpc_messages.requested_outputs(parsed)
            grpc_messages.parameters_from_proto(parsed.parameters)
            grpc_messages.infer_target(p)

        refused_or_answered(read, payload)


@given(st.text(max_size=40))
@FUZZ
def test_small_parsers_take_any_text(text: str) -> None:
    refused_or_answered(check_name, text)
    refused_or_answered(check_version, text)
    refused_or_answered(parse_request_timeout, text)
    refused_or_answered(binary_codec.header_length, text)


# The HTTP server, over a real loopback socket, with any bytes.

TOKEN = st.sampled_from(["GET", "POST", "HEAD", "PUT", "G\x00T", "", "PRI", "CONNECT"])
header_line = st.one_of(
    st.sampled_from(
        [
            b"Content-Length: 5\r\n",
            b"Content-Length: -1\r\n",
            b"Content-Length: 99999999999999999999\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: gzip, chunked\r\n",
            b"Expect: 100-continue\r\n",
            b"Connection: close\r\n",
            b"Host: t\r\n",
            b"X: \x00\r\n",
            b" folded\r\n",
        ]
    ),
    st.binary(max_size=30).map(lambda b: b + b"\r\n"),
)
http_request = st.builds(
    lambda method, target, version, headers, body: (
        method.encode("latin-1") + b" " + target + b" " + version + b"\r\n" + b"".join(headers) + b"\r\n" + body
    ),
    TOKEN,
    st.one_of(st.sampled_from([b"/echo/a", b"/v2/models/../infer", b"*", b"http://t/echo/x"]), st.binary(max_size=20)),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x", b""]),
    st.lists(header_line, max_size=4),
    st.one_of(st.binary(max_size=30), st.sampled_from([b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\n", b"0\r\n\r\n"])),
)


class LoopServer:
    """The HTTP server on its own loop thread; every error the loop would only log is kept."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda loop, context: self.errors.append(context))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        limits = HttpLimits(max_body=1 << 16, header_timeout=2, request_timeout=2, linger_timeout=0.2)
        self.server = HttpServer(routes(), render_error, limits)
        self.port = asyncio.run_coroutine_threadsafe(self.server.start("127.0.0.1", 0), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.shutdown(1), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def loop_server() -> Iterator[LoopServer]:
    server = LoopServer()
    try:
        yield server
    finally:
        server.stop()


def exchange(port: int, data: bytes) -> bytes:
    """Send, half-close, read to the close (the server answers what it received, then closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        received = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                received += chunk
        return received


@given(st.one_of(http_request, st.binary(max_size=120)))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
def test_http_server_takes_any_bytes(loop_server: LoopServer, data: bytes) -> None:
    received = exchange(loop_server.port, data)
    for line in received.split(b"\r\n"):
        if line.startswith(b"HTTP/1.1 5"):
            assert line.startswith((b"HTTP/1.1 501", b"HTTP/1.1 505", b"HTTP/1.1 503")), received[:300]
    assert loop_server.errors == [], loop_server.errors
    assert b"200" in exchange(loop_server.port, b"GET /echo/ok HTTP/1.1\r\nHost: t\r\n\r\n"), "still serving"
