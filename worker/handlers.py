"""The worker's REST front: path, headers and body in; a service call; rendering out.

Every route is a thin adapter over ``WorkerService``; errors raised by the
service are rendered by ``common.rest.render_error`` (one status table).
"""

from __future__ import annotations

import time
from dataclasses import replace

from common.http_router import Router
from common.http_server import Request, Response
from common.rest import JSON, METRICS_TYPE, V2Handlers, json_response, query_flag, v2_router
from protocol.deadline import REQUEST_TIMEOUT_HEADER, parse_request_timeout
from protocol.errors import BadRequest
from worker.codecs import JSON_CODEC
from worker.service import InferCall, WorkerService

BINARY_HEADER = "inference-header-content-length"
DEADLINE_HEADER = REQUEST_TIMEOUT_HEADER.lower()  # seconds the caller will wait (a balancer sends what is left)


def check_json_request(headers: dict[str, str]) -> None:
    """Refuse, clearly, a request in the binary tensor data extension (not served yet)."""
    if BINARY_HEADER in headers:
        raise BadRequest("the binary tensor data extension is not supported yet: send the request as JSON")


class WorkerHandlers:
    def __init__(self, service: WorkerService) -> None:
        self.service = service

    def routes(self) -> Router:
        return v2_router(
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
            )
        )

    async def infer(self, request: Request) -> Response:
        check_json_request(request.headers)
        match = request.match
        call = InferCall(match["name"], match.get("version"), request.body, JSON_CODEC)
        timeout = request.headers.get(DEADLINE_HEADER)
        if timeout is not None:
            call = replace(call, deadline=time.monotonic() + parse_request_timeout(timeout))
        answer = await self.service.infer(call)
        return Response(200, answer.payload, JSON, {"X-Model-Source": answer.source})

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

    def metrics(self, request: Request) -> Response:
        return Response(200, self.service.render_metrics(), METRICS_TYPE)
