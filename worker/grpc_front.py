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

from common.grpc_server import unary
from protocol.errors import BadRequest
from protocol.grpc_messages import infer_target
from protocol.grpc_service import inference_pb2 as pb
from protocol.types import TensorSpec
from worker.codecs import GRPC_CODEC
from worker.service import InferCall, WorkerService

Context = Any  # grpc.aio.ServicerContext (grpc ships no types)


def tensor_metadata(specs: tuple[TensorSpec, ...]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in specs]


async def unimplemented(request: object, context: Context) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "repository load and unload are not served over gRPC")


class WorkerServicer:
    def __init__(self, service: WorkerService) -> None:
        self.service = service

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return {
            "ModelInfer": unary(self.model_infer),
            "ServerLive": unary(self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": unary(self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": unary(self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": unary(self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "RepositoryIndex": unary(self.repository_index, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
            "RepositoryModelLoad": unary(unimplemented, pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse),
            "RepositoryModelUnload": unary(
                unimplemented, pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse
            ),
        }

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
