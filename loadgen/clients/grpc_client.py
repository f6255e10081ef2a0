"""V2 gRPC (``ModelInfer`` with raw input contents) over one grpc.aio channel.

A template is the message serialised once without its raw contents, plus each
input's raw bytes; a request appends the raw contents as protobuf fields (the
first input's with fresh leading elements), so it costs a concatenation, not
a serialisation. The answer is read as bytes (never parsed: the report needs
only its status and the trailing metadata ``x-cache``, ``x-served-by``,
``x-model-source``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from loadgen.clients.base import (
    ConnectionFailed,
    EncodedRequest,
    InferClient,
    Reply,
    RequestTimedOut,
)
from protocol.arrays import raw_from_array
from protocol.grpc_codec import request_message
from protocol.grpc_messages import length_delimited
from protocol.types import InferRequest

INFER = "/inference.GRPCInferenceService/ModelInfer"
RAW_INPUT_CONTENTS = 7
MAX_MESSAGE = 1 << 30  # the client never limits; the server's limit is what is measured
# gRPC codes as the report's HTTP-like statuses (the cluster says the exact one in affinity-status).
STATUS_BY_CODE = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 413,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


@dataclass(frozen=True, slots=True)
class GrpcTemplate:
    model: str
    head: bytes  # the message without raw contents
    first: bytes  # the first input's raw bytes after the varied elements
    rest: bytes  # the other inputs' raw contents, as fields
    datatype: str
    varied: int

    def render(self, values: np.ndarray) -> EncodedRequest:
        first = length_delimited(RAW_INPUT_CONTENTS, raw_from_array(self.datatype, values) + self.first)
        return EncodedRequest(self.model, "", b"".join((self.head, first, self.rest)), {})


def grpc_template(model: str, request: InferRequest, varied: int) -> GrpcTemplate:
    first = request.inputs[0]
    flat = first.data.reshape(-1)
    if not 0 < varied <= flat.size:
        raise ValueError(f"cannot vary {varied} of the {flat.size} values of input {first.name!r}")
    msg = request_message(request, model)
    raws = list(msg.raw_input_contents)
    del msg.raw_input_contents[:]
    head = msg.SerializeToString(deterministic=True)
    cut = len(raw_from_array(first.datatype, flat[:varied]))
    rest = b"".join(length_delimited(RAW_INPUT_CONTENTS, r) for r in raws[1:])
    return GrpcTemplate(model, head, raws[0][cut:], rest, first.datatype, varied)


class GrpcClient(InferClient):
    """``ModelInfer`` on ``grpc://host:port``."""

    protocol = "grpc"

    def __init__(self, url: str, connections: int, timeout: float) -> None:
        self.target = url.removeprefix("grpc://").rstrip("/")
        self.timeout = timeout
        self._channel: Any = None
        self._infer: Any = None

    def template(self, model: str, request: InferRequest, varied: int) -> GrpcTemplate:
        return grpc_template(model, request, varied)

    async def start(self) -> None:
        options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
        self._channel = grpc.aio.insecure_channel(self.target, options=options)
        self._infer = self._channel.unary_unary(INFER)

    async def send(self, request: EncodedRequest) -> Reply:
        assert self._infer is not None, "start() the client first"
        call = self._infer(request.body, timeout=self.timeout)
        try:
            await call
            metadata = dict(await call.trailing_metadata() or ())
            return Reply(200, metadata.get("x-cache"), metadata.get("x-served-by"), metadata.get("x-model-source"))
        except grpc.aio.AioRpcError as exc:
            return _failed(exc)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def _failed(exc: grpc.aio.AioRpcError) -> Reply:
    code = exc.code()
    metadata = dict(exc.trailing_metadata() or ())
    status = metadata.get("affinity-status")
    if isinstance(status, str) and status.isdigit():
        return Reply(int(status))
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        raise RequestTimedOut(exc.details() or "deadline exceeded") from None
    if code == grpc.StatusCode.UNAVAILABLE:
        raise ConnectionFailed(exc.details() or "unavailable") from None
    return Reply(STATUS_BY_CODE.get(code.name, 502))
