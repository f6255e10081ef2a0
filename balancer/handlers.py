"""The balancer's REST front: path, headers and body in; a service call; rendering out.

The infer handler stays synchronous when the service answers at once (a cache
hit): it returns a ``Response``, not a coroutine, so the HTTP server writes it
inside ``data_received`` without creating a task.

With ``--api-keys``, inference and the model and repository-index routes take
``Authorization: Bearer <key>`` (one dict lookup, constant time:
``common.api_keys``) and the key's tenant scopes the request's cache keys;
health, server metadata, ``/metrics`` and ``/openapi.json`` stay open, and the
admin routes take the admin token instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from balancer.admin import AdminService
from balancer.plan import Answer, InferCall
from balancer.service import BalancerService
from common.api_keys import ApiKeys
from common.auth import check_admin
from common.http_router import Router
from common.http_server import Request, Response
from common.openapi import OpenApiRoute
from common.rest import JSON, METRICS_TYPE, V2Handlers, json_response, query_flag, v2_router
from protocol import binary_codec
from protocol.deadline import REQUEST_TIMEOUT_HEADER, parse_request_timeout
from protocol.errors import BadRequest
from protocol.json_body import loads_object
from protocol.stats import stats_body

BINARY_HEADER = binary_codec.HEADER_KEY
TIMEOUT_HEADER = REQUEST_TIMEOUT_HEADER.lower()


def render(answer: Answer) -> Response:
    if answer.hit_headers is not None:
        return Response(answer.status, answer.body, None, None, answer.hit_headers)
    return Response(answer.status, answer.body, answer.content_type, answer.headers)


async def _render_later(pending: Awaitable[Answer]) -> Response:
    return render(await pending)


Route = Callable[[Request], Response | Awaitable[Response]]


class BalancerHandlers:
    def __init__(self, service: BalancerService, admin: AdminService, keys: ApiKeys | None = None) -> None:
        self.service = service
        self.admin = admin
        self.token = admin.admin_token
        self.keys = keys

    def _keyed(self, route: Route) -> Route:
        """The route, behind the API key check when keys are configured."""
        keys = self.keys
        if keys is None:
            return route

        def checked(request: Request) -> Response | Awaitable[Response]:
            keys.tenant(request.headers.get("authorization"))
            return route(request)

        return checked

    def routes(self) -> Router:
        router = v2_router(
            V2Handlers(
                infer=self.infer,
                live=self.live,
                ready=self.ready,
                server_metadata=self.server_metadata,
                model_metadata=self._keyed(self.model_metadata),
                model_ready=self._keyed(self.model_ready),
                model_config=self._keyed(self.model_config),
                repository_index=self._keyed(self.repository_index),
                metrics=self.metrics,
                model_stats=self._keyed(self.model_stats),
                repository_load=self.repository_load,
                repository_unload=self.repository_unload,
            )
        )
        router.add("POST", "/admin/workers/{worker}/drain", self.drain)
        router.add("POST", "/admin/workers/{worker}/undrain", self.undrain)
        router.add("GET", "/admin/cluster", self.cluster)
        router.add("GET", "/openapi.json", OpenApiRoute("balancer"))
        return router

    def infer(self, request: Request) -> Response | Awaitable[Response]:
        headers = request.headers
        match = request.match
        length = headers.get(BINARY_HEADER)
        given = headers.get(TIMEOUT_HEADER)
        timeout = parse_request_timeout(given) if given is not None else None
        keys = self.keys
        tenant = "" if keys is None else keys.tenant(headers.get("authorization"))
        if length is None:
            call = InferCall(
                match["name"],
                match.get("version"),
                request.body,
                headers.get("content-type", JSON),
                headers.get("cache-control"),
                timeout=timeout,
                tenant=tenant,
            )
        else:  # the binary tensor data extension: forwarded as it came, keyed from its raw bytes
            call = InferCall(
                match["name"],
                match.get("version"),
                request.body,
                headers.get("content-type", binary_codec.CONTENT_TYPE),
                headers.get("cache-control"),
                encoding="binary",
                header_length=binary_codec.header_length(length),
                timeout=timeout,
                tenant=tenant,
            )
        outcome = self.service.infer(call)
        return render(outcome) if isinstance(outcome, Answer) else _render_later(outcome)

    async def model_metadata(self, request: Request) -> Response:
        match = request.match
        return json_response(await self.service.model_metadata(match["name"], match.get("version")))

    async def model_ready(self, request: Request) -> Response:
        match = request.match
        ready = await self.service.model_ready(match["name"], match.get("version"))
        return json_response({"name": match["name"], "ready": ready}, 200 if ready else 503)

    async def model_config(self, request: Request) -> Response:
        match = request.match
        return json_response(await self.service.model_config(match["name"], match.get("version")))

    async def model_stats(self, request: Request) -> Response:
        match = request.match
        return json_response(stats_body(await self.service.model_stats(match["name"], match.get("version"))))

    def server_metadata(self, request: Request) -> Response:
        return json_response(self.service.server_metadata().to_json())

    def live(self, request: Request) -> Response:
        return json_response({"live": True})

    def ready(self, request: Request) -> Response:
        ready = self.service.ready
        return json_response({"ready": ready}, 200 if ready else 503)

    async def repository_index(self, request: Request) -> Response:
        return json_response(await self.service.repository_index(query_flag(request.body, "ready")))

    def metrics(self, request: Request) -> Response:
        return Response(200, self.service.render_metrics(), METRICS_TYPE)

    # admin: every route checks the token first (when one is set)

    async def repository_load(self, request: Request) -> Response:
        check_admin(request.headers, self.token)
        return json_response(await self.admin.repository(request.match["name"], "load", request.body))

    async def repository_unload(self, request: Request) -> Response:
        check_admin(request.headers, self.token)
        return json_response(await self.admin.repository(request.match["name"], "unload", request.body))

    async def drain(self, request: Request) -> Response:
        check_admin(request.headers, self.token)
        timeout = None
        if request.body.strip():
            value = loads_object(request.body).get("timeout")
            if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or value < 0):
                raise BadRequest("'timeout' must be a number of seconds")
            timeout = float(value) if value is not None else None
        return json_response(await self.admin.drain(request.match["worker"], timeout))

    def undrain(self, request: Request) -> Response:
        check_admin(request.headers, self.token)
        return json_response(self.admin.undrain(request.match["worker"]))

    def cluster(self, request: Request) -> Response:
        check_admin(request.headers, self.token)
        return json_response(self.admin.cluster())
