"""The worker's REST front: path, headers and body in; a service call; rendering out.

Every route is a thin adapter over ``WorkerService``; errors raised by the
service are rendered by ``common.rest.render_error`` (one status table).
Besides the V2 routes: the repository's ``load`` and ``unload`` (Triton's
shape) and ``GET /admin/memory``, which take the admin token when one is set,
and the statistics extension (``GET /v2/models/{name}/stats``).
"""

from __future__ import annotations

import time
from dataclasses import replace

from common.auth import check_admin
from common.http_router import Router
from common.http_server import Request, Response
from common.openapi import OpenApiRoute
from common.rest import JSON, METRICS_TYPE, V2Handlers, json_response, query_flag, v2_router
from protocol import binary_codec
from protocol.deadline import REQUEST_TIMEOUT_HEADER, parse_request_timeout
from protocol.json_body import loads_object
from protocol.repository import load_parameters
from protocol.stats import stats_body
from worker.codecs import BINARY_CODEC, JSON_CODEC, BinaryAnswer
from worker.service import InferCall, WorkerService

DEADLINE_HEADER = REQUEST_TIMEOUT_HEADER.lower()  # seconds the caller will wait (a balancer sends what is left)


class WorkerHandlers:
    def __init__(self, service: WorkerService) -> None:
        self.service = service
        self.admin_token = service.config.admin_token

    def routes(self) -> Router:
        router = v2_router(
            V2Handlers(
                infer=self.infer,
                live=self.live,
                ready=self.ready,
                server_metadata=self.server_metadata,
                model_metadata=self.model_metadata,
                model_ready=self.model_ready,
                model_config=self.model_config,
                repository_index=self.repository_index,
                metrics=self.metrics,
                repository_load=self.repository_load,
                repository_unload=self.repository_unload,
                model_stats=self.model_stats,
            )
        )
        router.add("GET", "/admin/memory", self.memory)
        router.add("GET", "/openapi.json", OpenApiRoute("worker"))
        return router

    async def infer(self, request: Request) -> Response:
        """A JSON body, or one in the binary extension (``Inference-Header-Content-Length``);
        the answer as the request asks (binary outputs with that header)."""
        match = request.match
        length = binary_codec.header_length(request.headers.get(binary_codec.HEADER_KEY))
        if length is None:
            call = InferCall(match["name"], match.get("version"), request.body, JSON_CODEC)
        else:
            call = InferCall(match["name"], match.get("version"), (request.body, length), BINARY_CODEC)
        timeout = request.headers.get(DEADLINE_HEADER)
        if timeout is not None:
            call = replace(call, deadline=time.monotonic() + parse_request_timeout(timeout))
        answer = await self.service.infer(call)
        payload = answer.payload
        if isinstance(payload, BinaryAnswer):
            headers = {"X-Model-Source": answer.source, binary_codec.HEADER: str(payload.header_length)}
            return Response(200, payload.body, binary_codec.CONTENT_TYPE, headers)
        return Response(200, payload, JSON, {"X-Model-Source": answer.source})

    def live(self, request: Request) -> Response:
        return json_response({"live": True})

    def ready(self, request: Request) -> Response:
        ready = self.service.ready
        return json_response({"ready": ready}, 200 if ready else 503)

    def server_metadata(self, request: Request) -> Response:
        return json_response(self.service.server_metadata().to_json())

    def model_metadata(self, request: Request) -> Response:
        match = request.match
        return json_response(self.service.model_metadata(match["name"], match.get("version")).to_json())

    def model_ready(self, request: Request) -> Response:
        match = request.match
        ready = self.service.model_ready(match["name"], match.get("version"))
        return json_response({"name": match["name"], "ready": ready}, 200 if ready else 503)

    def model_config(self, request: Request) -> Response:
        match = request.match
        return json_response(self.service.model_config(match["name"], match.get("version")))

    async def repository_index(self, request: Request) -> Response:
        rows = await self.service.repository_index(query_flag(request.body, "ready"))
        return json_response([row.to_json() for row in rows])

    async def repository_load(self, request: Request) -> Response:
        check_admin(request.headers, self.admin_token)
        version, pinned = load_parameters(request.body)
        row = await self.service.load_model(request.match["name"], version, pinned)
        return json_response(row.to_json())

    async def repository_unload(self, request: Request) -> Response:
        check_admin(request.headers, self.admin_token)
        name = request.match["name"]
        if request.body.strip():
            loads_object(request.body)  # Triton's unload_dependents and the like: nothing to do here
        unloaded = await self.service.unload_model(name)
        return json_response({"name": name, "unloaded": unloaded})

    def model_stats(self, request: Request) -> Response:
        match = request.match
        return json_response(stats_body(self.service.model_stats(match["name"], match.get("version"))))

    async def memory(self, request: Request) -> Response:
        check_admin(request.headers, self.admin_token)
        return json_response(await self.service.memory_report())

    def metrics(self, request: Request) -> Response:
        return Response(200, self.service.render_metrics(), METRICS_TYPE)
