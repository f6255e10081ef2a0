"""The OpenAPI description of the project's REST API, served at ``GET /openapi.json``.

One document, ``common/openapi.json``, written for this project, describes every
route of both processes; each operation's ``x-affinity-roles`` names the
processes that serve it, and each process answers the document cut down to its
own routes. ``tests/test_openapi.py`` checks that the routers and the document
agree, route for route, and runs a schema-driven fuzz against both processes.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson

from common.http_server import Request, Response

ROLES = ("balancer", "worker")
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def document(role: str) -> dict[str, Any]:
    """The description of the routes ``role`` serves."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    full: dict[str, Any] = orjson.loads(resources.files("common").joinpath("openapi.json").read_bytes())
    paths: dict[str, Any] = {}
    for path, item in full["paths"].items():
        kept = {m: o for m, o in item.items() if m not in METHODS or role in o.get("x-affinity-roles", ())}
        if any(m in METHODS for m in kept):
            paths[path] = kept
    return {**full, "info": {**full["info"], "title": f"affinity-serve {role}"}, "paths": paths}


def routes(doc: dict[str, Any]) -> set[tuple[str, str]]:
    """(METHOD, path template) of every operation the document describes."""
    return {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in METHODS}


class OpenApiRoute:
    """``GET /openapi.json``: the role's document, rendered once."""

    def __init__(self, role: str) -> None:
        self.body = orjson.dumps(document(role))

    def __call__(self, request: Request) -> Response:
        return Response(200, self.body, "application/json")
