"""The balancer's gRPC client to the workers: one pooled channel per worker.

A ModelInfer try sends the client's message bytes as they came (no
re-serialisation) and reads the answer as bytes; its outcome becomes an
``UpstreamResponse`` so the router treats it like a REST try:

- an answer: 200, the serialised ModelInferResponse (``x-model-source`` from
  the worker's trailing metadata);
- a worker's own error (it says ``affinity-status``): that status with a V2
  error body, so a 503 with ``retry-after`` is retried elsewhere and a 400
  passed through, exactly as over REST;
- no answer: DEADLINE_EXCEEDED is ``UpstreamError("timeout")``, UNAVAILABLE or
  CANCELLED ``"connect"`` / ``"reset"`` (retried on the next candidate);
- gRPC's own refusals (a message over a limit, ...) map by code.
"""

from __future__ import annotations

from typing import Any

import grpc

from balancer.errors import UpstreamError
from balancer.renderings import GRPC_CONTENT_TYPE
from balancer.transport import UpstreamResponse
from common.grpc_server import RETRY_AFTER_KEY, SERVICE, STATUS_KEY
from protocol.json_body import error_body

INFER = f"/{SERVICE}/ModelInfer"
JSON = "application/json"
# gRPC codes without our status metadata (gRPC's own answers), as REST statuses.
STATUS_BY_CODE = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 413,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNKNOWN": 500,
}


class GrpcUpstream:
    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._channels: dict[str, tuple[grpc.aio.Channel, Any]] = {}

    def _infer(self, target: str) -> Any:
        known = self._channels.get(target)
        if known is None:
            options = [
                ("grpc.max_receive_message_length", self.max_message),
                ("grpc.max_send_message_length", self.max_message),
            ]
            channel = grpc.aio.insecure_channel(target, options=options)
            known = self._channels[target] = (channel, channel.unary_unary(INFER))
        return known[1]

    async def infer(self, target: str | None, body: bytes, timeout: float) -> UpstreamResponse:  # noqa: ASYNC109 - the gRPC deadline of the call
        if target is None:  # a worker that serves no gRPC
            raise UpstreamError("connect")
        call = self._infer(target)(body, timeout=timeout)
        try:
            answer = await call
            metadata = dict(await call.trailing_metadata() or ())
        except grpc.aio.AioRpcError as exc:
            return _failed(exc)
        headers = {"Content-Type": GRPC_CONTENT_TYPE}
        source = metadata.get("x-model-source")
        if isinstance(source, str):
            headers["X-Model-Source"] = source
        return UpstreamResponse(200, answer, headers)

    async def close(self) -> None:
        for channel, _ in self._channels.values():
            await channel.close()
        self._channels.clear()


def _failed(exc: grpc.aio.AioRpcError) -> UpstreamResponse:
    metadata = dict(exc.trailing_metadata() or ())
    code = exc.code()
    status_text = metadata.get(STATUS_KEY)
    if isinstance(status_text, str) and status_text.isascii() and status_text.isdigit():
        headers = {"Content-Type": JSON}
        retry_after = metadata.get(RETRY_AFTER_KEY)
        if isinstance(retry_after, str):
            headers["Retry-After"] = retry_after
        return UpstreamResponse(int(status_text), error_body(exc.details() or code.name.lower()), headers)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        raise UpstreamError("timeout") from None
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        details = (exc.details() or "").lower()
        raise UpstreamError("connect" if "connect" in details else "reset") from None
    status = STATUS_BY_CODE.get(code.name, 502)
    return UpstreamResponse(status, error_body(exc.details() or code.name.lower()), {"Content-Type": JSON})
