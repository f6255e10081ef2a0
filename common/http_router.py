"""Route a request by method and path to a handler, with ``{name}`` path parameters.

Routes live in a trie of path segments: a lookup is one dict access per segment
(a static segment wins over a parameter at the same place; no backtracking), so
routing costs the same for the first route as for the last. A path that exists
with another method is a 405 carrying ``Allow`` (RFC 9110, 15.5.6), no match
at all a 404; HEAD is served by GET.
"""

from __future__ import annotations

from collections.abc import Awaitable

from common.http_server import Handler, HttpError, Request, Response


class _Node:
    __slots__ = ("children", "handlers", "param", "param_name")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.param_name = ""
        self.handlers: dict[str, Handler] = {}


class Router:
    def __init__(self) -> None:
        self._root = _Node()
        self.patterns: list[tuple[str, str]] = []  # (method, pattern) as added: the API's route list

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self.patterns.append((method, pattern))
        node = self._root
        for segment in pattern.strip("/").split("/"):
            if segment.startswith("{") and segment.endswith("}"):
                name = segment[1:-1]
                if node.param is None:
                    node.param, node.param_name = _Node(), name
                elif node.param_name != name:
                    raise ValueError(f"parameter {{{name}}} clashes with {{{node.param_name}}} in {pattern}")
                node = node.param
            else:
                node = node.children.setdefault(segment, _Node())
        node.handlers[method] = handler

    def __call__(self, request: Request) -> Response | Awaitable[Response]:
        node = self._root
        params: dict[str, str] = {}
        for segment in request.path.strip("/").split("/"):
            child = node.children.get(segment)
            if child is None:
                child = node.param
                if child is None:
                    raise HttpError(404, "no such route")
                params[node.param_name] = segment
            node = child
        handler = node.handlers.get(request.method)
        if handler is None and request.method == "HEAD":
            handler = node.handlers.get("GET")
        if handler is None:
            if node.handlers:
                raise HttpError(405, f"method {request.method} is not allowed here", {"Allow": _allow(node)})
            raise HttpError(404, "no such route")
        request.match = params
        return handler(request)


def _allow(node: _Node) -> str:
    methods = set(node.handlers)
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))
