"""The balancer's gRPC front: the V2 ``GRPCInferenceService`` as a thin adapter
over ``BalancerService``, with the same cache, policy, retries and deadlines
as REST.

``ModelInfer`` routes by the model in the message; the message is forwarded
to the workers' gRPC ports as it came, and the caller's deadline bounds every
try (``context.time_remaining``). A hit is answered from the one cached answer,
rendered as protobuf. ``cache-control`` request metadata works as the REST
header does; ``x-cache``, ``x-served-by`` and ``x-model-source`` come back as
trailing metadata. Errors map to gRPC statuses from the one table.

The repository's load and unload take the admin token as ``authorization:
Bearer <token>`` metadata and go to the model's home workers, as over REST.

With ``--api-keys``, inference, model metadata and readiness and the repository
index take ``authorization: Bearer <key>`` metadata (UNAUTHENTICATED without a
known one); the key's tenant scopes the cache keys, as over REST.
"""

from __future__ import annotations

from typing import Any

import grpc
import orjson

from balancer.admin import AdminService
from balancer.caching import LARGE_MESSAGE
from balancer.plan import Answer, InferCall
from balancer.renderings import GRPC_CONTENT_TYPE
from balancer.service import BalancerService
from common.api_keys import ApiKeys
from common.auth import check_admin
from common.grpc_server import metadata_headers, v2_handlers
from protocol.errors import BadRequest, error_for_status
from protocol.grpc_messages import infer_target, parse_request, repository_body
from protocol.grpc_service import inference_pb2 as pb

Context = Any  # grpc.aio.ServicerContext (grpc ships no types)


def _tensors(raw: Any) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        for t in raw or []
    ]


class BalancerServicer:
    def __init__(self, service: BalancerService, admin: AdminService, keys: ApiKeys | None = None) -> None:
        self.service = service
        self.admin = admin
        self.keys = keys

    def _tenant(self, context: Context) -> str:
        """The caller's tenant ("" without API keys); Unauthorized without a known key."""
        return "" if self.keys is None else self.keys.tenant(metadata_headers(context).get("authorization"))

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return v2_handlers(self)

    async def model_infer(self, request: bytes, context: Context) -> bytes:
        tenant = self._tenant(context)
        # A large message is parsed off the event loop, with its key; a small one here.
        if len(request) > LARGE_MESSAGE:
            msg = None
            model, version = infer_target(request)
        else:
            msg = parse_request(request)
            model, version = msg.model_name, msg.model_version
        if not model:
            raise BadRequest("'model_name' is required")
        metadata = dict(context.invocation_metadata() or ())
        cache_control = metadata.get("cache-control")
        call = InferCall(
            model,
            version or None,
            request,
            GRPC_CONTENT_TYPE,
            cache_control if isinstance(cache_control, str) else None,
            protocol="grpc",
            encoding="grpc",
            message=msg,
            timeout=context.time_remaining(),
            tenant=tenant,
        )
        outcome = self.service.infer(call)
        answer = outcome if isinstance(outcome, Answer) else await outcome
        if answer.status != 200:
            raise error_for_status(answer.status, _message(answer.body, answer.status))
        trailing = [("x-cache", answer.cache), ("x-served-by", answer.served_by)]
        source = (answer.headers or {}).get("X-Model-Source")
        if source is not None:
            trailing.append(("x-model-source", source))
        context.set_trailing_metadata(tuple(trailing))
        return answer.body

    async def server_live(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready)

    async def model_ready(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        self._tenant(context)
        return pb.ModelReadyResponse(ready=await self.service.model_ready(request.name, request.version or None))

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        meta = self.service.server_metadata()
        return pb.ServerMetadataResponse(name=meta.name, version=meta.version, extensions=meta.extensions)

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        self._tenant(context)
        meta = await self.service.model_metadata(request.name, request.version or None)
        return pb.ModelMetadataResponse(
            name=str(meta.get("name", "")),
            versions=[str(v) for v in meta.get("versions", [])],
            platform=str(meta.get("platform", "")),
            inputs=_tensors(meta.get("inputs")),
            outputs=_tensors(meta.get("outputs")),
        )

    async def repository_index(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        self._tenant(context)
        rows = await self.service.repository_index(request.ready)
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=str(r["name"]), version=str(r["version"]), state=str(r["state"]), reason=str(r["reason"])
                )
                for r in rows
            ]
        )

    async def repository_load(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        """As REST's load: the admin token (``authorization`` metadata); the model's
        home workers load it, with the same parameters."""
        check_admin(metadata_headers(context), self.admin.admin_token)
        await self.admin.repository(request.model_name, "load", repository_body(request.parameters))
        return pb.RepositoryModelLoadResponse()

    async def repository_unload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        check_admin(metadata_headers(context), self.admin.admin_token)
        await self.admin.repository(request.model_name, "unload", repository_body(request.parameters))
        return pb.RepositoryModelUnloadResponse()


def _message(body: bytes, status: int) -> str:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    message = obj.get("error") if isinstance(obj, dict) else None
    return str(message or f"a worker answered {status}")
