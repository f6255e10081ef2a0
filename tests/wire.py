"""Test clients for the three encodings, on our own codecs: REST JSON, REST
binary (the binary tensor extension) and gRPC (raw contents), each returning
the exact answer bytes, the decoded answer and the cluster's headers."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from protocol.grpc_codec import decode_grpc_response, request_message
from protocol.grpc_service import inference_pb2 as pb
from protocol.json_codec import (
    decode_binary_response,
    decode_infer_response,
    encode_binary_request,
    encode_infer_request,
)
from protocol.types import InferRequest, InferResponse
from tests.harness import request

INFER = "/inference.GRPCInferenceService/ModelInfer"
NO_CACHE = {"Cache-Control": "no-cache"}


@dataclass
class Answer:
    raw: bytes
    response: InferResponse
    cache: str | None
    served_by: str | None


def rest_json(base: str, model: str, req: InferRequest, headers: dict[str, str] | None = None) -> Answer:
    resp = request(base, "POST", f"/v2/models/{model}/infer", encode_infer_request(req), headers)
    assert resp.status == 200, resp.body
    return Answer(
        resp.body, decode_infer_response(resp.body), resp.headers.get("x-cache"), resp.headers.get("x-served-by")
    )


def rest_binary(base: str, model: str, req: InferRequest, headers: dict[str, str] | None = None) -> Answer:
    body, length = encode_binary_request(req)
    sent = {
        "Inference-Header-Content-Length": str(length),
        "Content-Type": "application/octet-stream",
        **(headers or {}),
    }
    resp = request(base, "POST", f"/v2/models/{model}/infer", body, sent)
    assert resp.status == 200, resp.body
    answer_length = resp.headers.get("inference-header-content-length")
    decoded = decode_binary_response(resp.body, None if answer_length is None else int(answer_length))
    return Answer(resp.body, decoded, resp.headers.get("x-cache"), resp.headers.get("x-served-by"))


def grpc_call(
    target: str, body: bytes, metadata: dict[str, str] | None = None, timeout: float = 30
) -> tuple[bytes, dict[str, str]]:
    """One raw ModelInfer: the answer's exact bytes and its trailing metadata."""
    with grpc.insecure_channel(target) as channel:
        infer = channel.unary_unary(INFER)
        raw, call = infer.with_call(body, timeout=timeout, metadata=tuple((metadata or {}).items()))
        return raw, dict(call.trailing_metadata() or ())


def grpc_infer(target: str, model: str, req: InferRequest, headers: dict[str, str] | None = None) -> Answer:
    metadata = {k.lower(): v for k, v in (headers or {}).items()}
    raw, trailing = grpc_call(target, request_message(req, model).SerializeToString(), metadata)
    response = decode_grpc_response(pb.ModelInferResponse.FromString(raw))
    return Answer(raw, response, trailing.get("x-cache"), trailing.get("x-served-by"))
