"""The worker's gRPC front: the V2 ``GRPCInferenceService`` as a thin adapter
over ``WorkerService``, beside the REST one and sharing its models, memory and
batching.

``ModelInfer`` reads only the model name and version from the message's field
headers on the event loop (``protocol.grpc_messages.infer_target``); the
message is decoded, checked and its answer encoded by the gRPC codec in the
inference pool, like every other request. Errors map to gRPC statuses from the
one table (``common.grpc_server``); where the model was when the request came
travels as trailing metadata ``x-model-source``.
"""

from __future__ import annotations

from typing import Any

import grpc

from common.auth import check_admin
from common.grpc_server import metadata_headers, v2_handlers
from protocol.errors import BadRequest
from protocol.grpc_messages import infer_target, repository_body
from protocol.grpc_service import inference_pb2 as pb
from protocol.repository import load_parameters
from protocol.types import TensorSpec
from worker.codecs import GRPC_CODEC
from worker.service import InferCall, WorkerService

Context = Any  # grpc.aio.ServicerContext (grpc ships no types)


def tensor_metadata(specs: tuple[TensorSpec, ...]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in specs]


class WorkerServicer:
    def __init__(self, service: WorkerService) -> None:
        self.service = service
        self.admin_token = service.config.admin_token

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return v2_handlers(self)

    async def model_infer(self, request: bytes, context: Context) -> bytes:
        model, version = infer_target(request)
        if not model:
            raise BadRequest("'model_name' is required")
        answer = await self.service.infer(InferCall(model, version or None, request, GRPC_CODEC, "grpc"))
        context.set_trailing_metadata((("x-model-source", answer.source),))
        return answer.payload

    async def server_live(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready)

    async def model_ready(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.service.model_ready(request.name, request.version or None))

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        meta = self.service.server_metadata()
        return pb.ServerMetadataResponse(name=meta.name, version=meta.version, extensions=meta.extensions)

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        meta = self.service.model_metadata(request.name, request.version or None)
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=tensor_metadata(meta.inputs),
            outputs=tensor_metadata(meta.outputs),
        )

    async def repository_index(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        rows = await self.service.repository_index(request.ready)
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(name=r.name, version=r.version, state=r.state, reason=r.reason)
                for r in rows
            ]
        )

    async def repository_load(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        """As REST's load: the admin token (``authorization`` metadata), then the
        ``version`` (string) and ``pinned`` (bool) parameters."""
        check_admin(metadata_headers(context), self.admin_token)
        version, pinned = load_parameters(repository_body(request.parameters))
        await self.service.load_model(request.model_name, version, pinned)
        return pb.RepositoryModelLoadResponse()

    async def repository_unload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        check_admin(metadata_headers(context), self.admin_token)
        await self.service.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()
