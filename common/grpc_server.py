"""What both gRPC fronts share: the grpc.aio listener with its limits and health
service, and the one translation of ``protocol.errors`` into gRPC statuses.

- Limits: ``max_message`` bounds messages received and sent (gRPC's own 4 MiB
  default unless raised); past it grpc answers RESOURCE_EXHAUSTED itself.
- Errors: a ``ProtocolError`` becomes its ``grpc_code`` with its message, and
  trailing metadata ``affinity-status`` (the REST status, so a balancer
  forwarding over gRPC knows a 503 from a 502 and a 413 from a 507) and
  ``retry-after`` when set; anything unexpected is logged and answered
  INTERNAL "internal error", never a stack trace.
- Health: ``grpc.health.v1`` reports SERVING for the server ("") and for the
  inference service while the process is ready, and switches one way to
  NOT_SERVING when it drains, before ``stop(grace)``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protocol.errors import ProtocolError
from protocol.grpc_service import inference_pb2 as pb

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
DEFAULT_MAX_MESSAGE = 4 << 20  # gRPC's own default
STATUS_KEY = "affinity-status"
RETRY_AFTER_KEY = "retry-after"

Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def status_code(exc: ProtocolError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.grpc_code, grpc.StatusCode.INTERNAL)


def error_metadata(exc: ProtocolError) -> tuple[tuple[str, str], ...]:
    metadata = [(STATUS_KEY, str(exc.status))]
    if exc.retry_after is not None:
        metadata.append((RETRY_AFTER_KEY, str(exc.retry_after)))
    return tuple(metadata)


def guarded(handler: Unary) -> Unary:
    """The handler, with every error answered as a gRPC status from the one table."""

    @functools.wraps(handler)
    async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(request, context)
        except ProtocolError as exc:
            await context.abort(status_code(exc), exc.message, error_metadata(exc))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unhandled error in %s", getattr(handler, "__name__", "a gRPC handler"))
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return run


def unary(handler: Unary, request_type: Any = None, response_type: Any = None) -> grpc.RpcMethodHandler:
    """A guarded unary handler; with no message types it takes and returns raw bytes."""
    return grpc.unary_unary_rpc_method_handler(
        guarded(handler),
        request_deserializer=None if request_type is None else request_type.FromString,
        response_serializer=None if response_type is None else response_type.SerializeToString,
    )


class V2Servicer(Protocol):
    """What a front serves of ``inference.GRPCInferenceService``: ``model_infer`` takes
    and returns raw message bytes (each front decodes only what it needs); the rest
    take and return the protobuf messages."""

    async def model_infer(self, request: Any, context: Any) -> Any: ...
    async def server_live(self, request: Any, context: Any) -> Any: ...
    async def server_ready(self, request: Any, context: Any) -> Any: ...
    async def model_ready(self, request: Any, context: Any) -> Any: ...
    async def server_metadata(self, request: Any, context: Any) -> Any: ...
    async def model_metadata(self, request: Any, context: Any) -> Any: ...
    async def repository_index(self, request: Any, context: Any) -> Any: ...
    async def repository_load(self, request: Any, context: Any) -> Any: ...
    async def repository_unload(self, request: Any, context: Any) -> Any: ...


def v2_handlers(servicer: V2Servicer) -> dict[str, grpc.RpcMethodHandler]:
    """The service's method table over a front's handlers, the same for worker and balancer."""
    return {
        "ModelInfer": unary(servicer.model_infer),
        "ServerLive": unary(servicer.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": unary(servicer.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": unary(servicer.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": unary(servicer.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelMetadata": unary(servicer.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "RepositoryIndex": unary(servicer.repository_index, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
        "RepositoryModelLoad": unary(
            servicer.repository_load, pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse
        ),
        "RepositoryModelUnload": unary(
            servicer.repository_unload, pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse
        ),
    }


class GrpcListener:
    """A grpc.aio server for one service's handlers, plus the health service."""

    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler], max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._handlers = handlers
        self._server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()

    async def start(
        self, host: str, port: int, reuse_port: bool = False, tls: tuple[bytes, bytes] | None = None
    ) -> int:
        """Listen on ``host:port``; the bound port. OSError when it cannot bind.
        ``reuse_port``: share the port with sibling processes (otherwise a port in
        use is an error, never silently shared); ``tls``: (private key, certificate
        chain) as PEM, for a TLS listener."""
        options = [
            ("grpc.max_receive_message_length", self.max_message),
            ("grpc.max_send_message_length", self.max_message),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, self._handlers),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        try:
            if tls is None:
                bound = server.add_insecure_port(f"{host}:{port}")
            else:
                bound = server.add_secure_port(f"{host}:{port}", grpc.ssl_server_credentials([tls]))
        except RuntimeError as exc:
            raise OSError(f"gRPC cannot listen on {host}:{port}") from exc
        if bound == 0:
            raise OSError(f"gRPC cannot listen on {host}:{port}")
        await server.start()
        self._server = server
        return bound

    async def set_serving(self) -> None:
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def drain(self) -> None:
        """Report NOT_SERVING from now on (one way), still answering calls."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        """Stop taking calls, let running ones finish within ``grace`` seconds."""
        if self._server is not None:
            await self.drain()
            await self._server.stop(grace)
            self._server = None


def metadata_headers(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The call's text metadata as headers (gRPC keys are lower-case already), so a
    call is checked by the same rules as a REST request (the admin token, API keys)."""
    return {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}
