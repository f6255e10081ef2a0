"""Request smuggling shapes get one 400 and a close: from the server itself, from a
real worker, and through a real balancer in front of real workers, where the
workers' own request counters show that nothing was forwarded."""

from __future__ import annotations

import socket

import orjson
import pytest

from common.http_server import Request
from tests.harness import Server, request
from tests.http_wire import exchange, final_statuses, run, serving
from tests.metrics_text import metric_sum

INFER = b"/v2/models/mlp-00/infer"
BODY = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.25] * 64}]})
# The request a smuggler hopes the next hop reads as a second one: never cached, so a
# balancer that read it would forward it to a worker.
INNER = (
    b"POST " + INFER + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Cache-Control: no-cache, no-store\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)
FRONT = b"POST " + INFER + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
TERMINATOR = b"0\r\n\r\n"

SHAPES = {
    "content-length with transfer-encoding": FRONT
    + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(TERMINATOR)
    + TERMINATOR
    + INNER,
    "transfer-encoding with content-length": FRONT
    + b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n" % (len(TERMINATOR) + len(INNER))
    + TERMINATOR
    + INNER,
    "differing duplicate content-length": FRONT
    + b"Content-Length: 2\r\nContent-Length: %d\r\n\r\n{}" % (2 + len(INNER))
    + INNER,
    "content-length list": FRONT + b"Content-Length: 2, %d\r\n\r\n{}" % (2 + len(INNER)) + INNER,
    "chunk size not hex": FRONT + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n" + TERMINATOR + INNER,
    "chunk size overflow": FRONT + b"Transfer-Encoding: chunked\r\n\r\n1" + b"0" * 16 + b"2\r\n{}\r\n" + INNER,
    "negative chunk size": FRONT + b"Transfer-Encoding: chunked\r\n\r\n-2\r\n{}\r\n" + TERMINATOR + INNER,
    "chunk size with space": FRONT + b"Transfer-Encoding: chunked\r\n\r\n2 \r\n{}\r\n" + TERMINATOR + INNER,
    "chunk data longer than its size": FRONT + b"Transfer-Encoding: chunked\r\n\r\n1\r\n{}\r\n" + TERMINATOR + INNER,
    "transfer-encoding not ending in chunked": FRONT + b"Transfer-Encoding: chunked, identity\r\n\r\n" + INNER,
    "unknown transfer-encoding": FRONT + b"Transfer-Encoding: gzip\r\n\r\n" + INNER,
    "space before colon": FRONT + b"Transfer-Encoding : chunked\r\nContent-Length: 2\r\n\r\n{}" + INNER,
    "obs-fold": FRONT + b"X-Fold: a\r\n b\r\nContent-Length: 2\r\n\r\n{}" + INNER,
    "obs-fold in transfer-encoding": FRONT + b"Transfer-Encoding:\r\n chunked\r\n\r\n" + TERMINATOR + INNER,
    "bare LF ending the request line": b"POST " + INFER + b" HTTP/1.1\nHost: x\r\nContent-Length: 2\r\n\r\n{}" + INNER,
    "bare LF ending a header": FRONT + b"X-A: a\nContent-Length: 2\r\n\r\n{}" + INNER,
    "bare CR ending a header": FRONT + b"X-A: a\rContent-Length: 2\r\n\r\n{}" + INNER,
    "NUL in a header": FRONT + b"X-A: a\0b\r\nContent-Length: 2\r\n\r\n{}" + INNER,
    "NUL in the target": b"POST " + INFER + b"\0 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}" + INNER,
    "chunked HTTP/1.0": FRONT.replace(b"HTTP/1.1", b"HTTP/1.0")
    + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n"
    + TERMINATOR
    + INNER,
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_smuggling_shapes_get_one_400_and_a_close(shape: str) -> None:
    async def main() -> tuple[bytes, list[Request]]:
        calls: list[Request] = []
        async with serving(calls=calls) as (_, port):
            return await exchange(port, SHAPES[shape]), calls

    received, calls = run(main)
    assert final_statuses(received) == [400], received[:300]
    assert received.endswith(b"}"), "nothing follows the one answer"
    assert not calls, "no part of it reached a handler"


def _raw(server: Server, data: bytes) -> bytes:
    """Send exact bytes and read until the server closes."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _served(servers: list[Server]) -> float:
    """Requests the servers counted, whatever their outcome."""
    return sum(metric_sum(request(s.url, "GET", "/metrics").body.decode(), "affinity_requests_total") for s in servers)


def test_smuggling_shapes_reach_no_worker_through_the_balancer(balancer: Server, workers: list[Server]) -> None:
    """Each shape, sent to the balancer and to a worker directly: one 400 and a close, and
    the workers count no request at all; then one plain request is counted, once."""
    before = _served(workers)
    balancer_before = _served([balancer])
    for name, data in SHAPES.items():
        for target in (balancer, workers[0]):
            received = _raw(target, data)
            assert final_statuses(received) == [400], f"{name} via {target.proc.name}: {received[:300]!r}"
    assert _served(workers) == before, "a smuggled request reached a worker"
    assert _served([balancer]) == balancer_before, "the balancer served a smuggled request"

    answered = _raw(balancer, INNER.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n"))
    assert final_statuses(answered) == [200]
    assert _served(workers) == before + 1, "the counters do see a request that is forwarded"
