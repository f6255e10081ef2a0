"""Bad input gets the right 4xx (or gRPC status) with a V2 error body, the service
stays healthy, and nothing the balancer can refuse reaches a worker.

The malformed requests are data: ``tests/corpus/bad_requests.json`` (REST JSON,
the binary extension and gRPC), each with the answer it must get from the
balancer and from a worker alike. What the balancer refuses is everything it
can tell from the request itself (syntax, types, lengths, sizes, names); what
needs the model's interface (its input names, shapes, datatypes, batch limit)
the worker refuses, and the corpus marks those ``"at": "worker"``.
"""

from __future__ import annotations

import base64
import re
import socket
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from google.protobuf import json_format

from protocol.grpc_service import inference_pb2 as pb
from tests.harness import Server, request
from tests.metrics_text import metric_sum
from tests.reference import infer_body, sample_inputs
from tests.wire import INFER

CORPUS: list[dict[str, Any]] = orjson.loads((Path(__file__).parent / "corpus" / "bad_requests.json").read_bytes())[
    "cases"
]
REST = [c for c in CORPUS if c["via"] != "grpc"]
GRPC = [c for c in CORPUS if c["via"] == "grpc"]
LEAK = re.compile(r"Traceback|File \"|/tmp/|/home/|/usr/|site-packages|\.py\b|0x[0-9a-f]{6,}")


def _path(case: dict[str, Any]) -> str:
    if "path" in case:
        return str(case["path"])
    version = f"/versions/{case['version']}" if "version" in case else ""
    return f"/v2/models/{case['model']}{version}/infer"


def _raw_http(base: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Exact bytes out, (status, body) back: for requests http.client will not send."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body)
        received = b""
        while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < _length(received):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    status = int(received.split(b" ", 2)[1])
    return status, received.partition(b"\r\n\r\n")[2]


def _length(received: bytes) -> int:
    found = re.search(rb"(?i)content-length: *(\d+)", received.partition(b"\r\n\r\n")[0])
    return int(found.group(1)) if found else 0


def send_rest(base: str, case: dict[str, Any]) -> tuple[int, bytes]:
    make = case.get("make", {})
    path = _path(case)
    headers = {"Content-Type": "application/json", **case.get("headers", {})}
    if case["via"] == "binary":
        header = case["header_text"].encode()
        body = header + base64.b64decode(case["data_b64"])
        length = case.get("length")
        declared = len(header) + int(length[1:]) if isinstance(length, str) else len(header)
        headers = {"Inference-Header-Content-Length": str(declared), "Content-Type": "application/octet-stream"}
    elif "json" in case:
        body = orjson.dumps(case["json"])
    elif "text" in case:
        body = case["text"].encode()
    elif "raw_b64" in make:
        body = base64.b64decode(make["raw_b64"])
    elif "nested_body" in make:
        depth = make["nested_body"]
        body = b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"
    elif "nested_data" in make:
        depth = make["nested_data"]
        data = b"[" * depth + b"0.5" + b"]" * depth
        body = b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ' + data + b"}]}"
    elif "content_length" in make:  # declared past the limit: refused before a byte of it is read
        head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {make['content_length']}\r\n\r\n"
        return _raw_http(base, head.encode(), b"{}")
    else:
        body = b""
    if not path.isascii() or "\x00" in path:
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = f"POST {path} HTTP/1.1\r\nHost: t\r\n{lines}Content-Length: {len(body)}\r\n\r\n"
        return _raw_http(base, head.encode("latin-1"), body)
    resp = request(base, "POST", path, body, headers)
    return resp.status, resp.body


def grpc_message(case: dict[str, Any]) -> bytes:
    make = case.get("make", {})
    if "message_bytes" in make:
        big = pb.ModelInferRequest(model_name="mlp-00", raw_input_contents=[bytes(make["message_bytes"])])
        big.inputs.add(name="input", datatype="UINT8", shape=[make["message_bytes"]])
        return big.SerializeToString()
    if "raw_b64" in case:
        return base64.b64decode(case["raw_b64"])
    return json_format.ParseDict(case["message"], pb.ModelInferRequest()).SerializeToString()


def send_grpc(target: str, case: dict[str, Any]) -> tuple[grpc.StatusCode, str]:
    options = [("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(target, options=options) as channel:
        try:
            metadata = tuple(case.get("metadata", {}).items())
            channel.unary_unary(INFER)(grpc_message(case), timeout=30, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _targets(balancer: Server, workers: list[Server]) -> list[Server]:
    return [balancer, workers[0]]


def worker_requests(workers: list[Server]) -> float:
    """Inference requests the workers' services have seen (every protocol, every code)."""
    texts = [request(w.url, "GET", "/metrics").body.decode() for w in workers]
    return sum(metric_sum(text, "affinity_requests_total", role="worker") for text in texts)


def test_the_corpus_covers_every_kind() -> None:
    assert len(CORPUS) >= 60
    assert len({c["id"] for c in CORPUS}) == len(CORPUS)
    assert {c["via"] for c in CORPUS} == {"rest", "binary", "grpc"}
    assert {c["at"] for c in CORPUS} == {"balancer", "worker"}


@pytest.mark.parametrize("case", REST, ids=[c["id"] for c in REST])
def test_bad_rest_input_is_a_clear_4xx(balancer: Server, workers: list[Server], case: dict[str, Any]) -> None:
    for target in _targets(balancer, workers):
        status, body = send_rest(target.url, case)
        assert status == case["status"], (target.url, body)
        error = orjson.loads(body)["error"]
        assert case["words"].lower() in error.lower(), (target.url, error)
        assert not LEAK.search(error), error


@pytest.mark.parametrize("case", GRPC, ids=[c["id"] for c in GRPC])
def test_bad_grpc_input_is_a_clear_status(balancer: Server, workers: list[Server], case: dict[str, Any]) -> None:
    for target in _targets(balancer, workers):
        assert target.grpc is not None
        code, details = send_grpc(target.grpc, case)
        assert code.name == case["code"], (target.grpc, code, details)
        assert case["words"].lower() in details.lower(), (target.grpc, details)
        assert not LEAK.search(details), details


def test_nothing_the_balancer_can_refuse_reaches_a_worker(balancer: Server, workers: list[Server]) -> None:
    """Counted at the workers: the balancer's refusals add nothing; each request only
    a worker can judge reaches exactly one worker."""
    assert balancer.grpc is not None
    reached: dict[str, float] = {}
    for case in CORPUS:
        before = worker_requests(workers)
        if case["via"] == "grpc":
            send_grpc(balancer.grpc, case)
        else:
            send_rest(balancer.url, case)
        reached[case["id"]] = worker_requests(workers) - before
    assert {i: n for i, n in reached.items() if n} == {c["id"]: 1 for c in CORPUS if c["at"] == "worker"}


_HEADER = b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"parameters":{"binary_data_size":256}}]}'


def test_a_true_binary_request_is_served(balancer: Server, workers: list[Server]) -> None:
    body = _HEADER + bytes(256)
    for target in _targets(balancer, workers):
        headers = {"Inference-Header-Content-Length": str(len(_HEADER)), "Content-Type": "application/octet-stream"}
        resp = request(target.url, "POST", "/v2/models/mlp-00/infer", body, headers)
        assert resp.status == 200, resp.body
        assert resp.json()["outputs"][0]["name"] == "logits"


def test_service_healthy_after_bad_input(balancer: Server, workers: list[Server], zoo: Path) -> None:
    for case in REST:
        send_rest(balancer.url, case)
    for target in [balancer, *workers]:
        assert request(target.url, "GET", "/v2/health/ready").status == 200
    body = infer_body(sample_inputs(zoo, "mlp-00", 1, 7))
    assert request(balancer.url, "POST", "/v2/models/mlp-00/infer", body).status == 200


def test_unknown_route_and_method_are_json_errors(balancer: Server) -> None:
    resp = request(balancer.url, "GET", "/v2/nothing-here")
    assert resp.status == 404 and "error" in resp.json()
    resp = request(balancer.url, "GET", "/v2/models/mlp-00/infer")
    assert resp.status == 405 and "error" in resp.json()
