"""What crosses the HTTP server's boundary: requests, answers, header blocks, refusals.

Response header lines are checked for CR, LF and NUL before they are written,
whatever their source (a handler, an upstream worker, a cache entry read from a
shared Redis): a value that could end its line and start another is refused
(``UnsafeHeader``, answered as a 500), never written. Header lines that never
change are encoded and checked once into a ``HeaderBlock``, the only form in
which the server takes pre-encoded lines, so the hit path encodes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus

_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_CONTENT_TYPE_LINES: dict[str, bytes] = {}  # content type -> checked header line (a few distinct values)
_MAX_CONTENT_TYPES = 64


class UnsafeHeader(ValueError):
    """A response header name or value that would break out of its line."""


class Request:
    __slots__ = ("body", "headers", "match", "method", "path", "query")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.path = path  # origin-form path, also for an absolute-form request target
        self.query = query
        self.headers = headers  # names lower-cased; repeated headers joined with ", "
        self.body = body
        self.match: dict[str, str] = {}


class HeaderBlock:
    """Response header lines encoded and checked once, for answers whose headers
    repeat (a cached answer keeps its own block, so a hit encodes nothing)."""

    __slots__ = ("raw",)

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.raw = encode_headers(headers)


class Response:
    """An answer. ``headers`` are checked as they are written; ``raw_headers``
    is a block checked when it was built."""

    __slots__ = ("body", "content_type", "headers", "raw_headers", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        content_type: str | None = "application/json",
        headers: dict[str, str] | None = None,
        raw_headers: HeaderBlock | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers
        self.raw_headers = raw_headers


Handler = Callable[[Request], "Response | Awaitable[Response]"]
ErrorRenderer = Callable[[BaseException], Response]


class HttpError(Exception):
    """An HTTP-level refusal (unknown route, bad method, a request over a limit),
    rendered by the server's ``on_error`` like any other error; ``headers``
    (``Allow`` on a 405) are added to whatever the renderer answers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """``Name: value`` lines, each ending in CRLF; ``UnsafeHeader`` if a name or
    value holds CR, LF or NUL (one count over the whole block, not a scan per value)."""
    text = ""
    for name, value in headers.items():  # a loop: cheaper than a comprehension for a few
        text += f"{name}: {value}\r\n"
    lines = len(headers)
    if text.count("\n") != lines or text.count("\r") != lines or "\0" in text:
        raise UnsafeHeader("a response header holds CR, LF or NUL")
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise UnsafeHeader("a response header is not latin-1") from None


def content_type_line(content_type: str) -> bytes:
    """The checked ``Content-Type`` line, from a small table after the first time."""
    line = _CONTENT_TYPE_LINES.get(content_type)
    if line is None:
        line = encode_headers({"Content-Type": content_type})
        if len(_CONTENT_TYPE_LINES) < _MAX_CONTENT_TYPES:
            _CONTENT_TYPE_LINES[content_type] = line
    return line


def status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status


def render_head(response: Response, preamble: bytes, keep_alive: bool) -> bytes:
    """Status line and header section of ``response``; ``preamble`` holds the
    lines every answer carries (Server, Date). (The connection inlines this.)"""
    head = b"%s%sContent-Length: %d\r\n" % (status_line(response.status), preamble, len(response.body))
    if response.content_type is not None:
        head += content_type_line(response.content_type)
    if response.headers:
        head += encode_headers(response.headers)
    if response.raw_headers is not None:
        head += response.raw_headers.raw
    if not keep_alive:
        head += b"Connection: close\r\n"
    return head + b"\r\n"
