"""A small, fast HTTP/1.1 server on asyncio protocols and httptools.

Why not aiohttp's server: measured on one core here, aiohttp's web application
answers ~6.4k small POSTs a second and its low-level server ~8.3k, while an
asyncio protocol over httptools answers ~68k (docs/benchmarks.md). The
balancer's cache-hit path must keep up with nginx (~20k), so both servers
use this front (and the balancer's upstream client is built the same way).

What it does:
- keep-alive and pipelining (answers in request order, one handler at a time
  per connection), ``Expect: 100-continue``, chunked request bodies, HEAD;
- a handler returns a ``Response`` (answered inside ``data_received``: no task
  at all) or an awaitable of one (run as an owned task);
- limits enforced while reading: URL 8 KiB (414), headers 64 KiB (431), body
  ``max_body`` (413, from Content-Length before any body byte is read); a
  request must arrive whole within ``request_timeout`` (408) and an idle
  keep-alive connection closes after ``keepalive_timeout``, so slow clients
  cannot hold connections forever;
- graceful shutdown: stop listening, let running handlers finish (bounded),
  then close every connection.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import httptools

log = logging.getLogger(__name__)

MAX_URL = 8 << 10
MAX_HEADERS = 64 << 10
MAX_PIPELINED = 32

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class Request:
    __slots__ = ("body", "headers", "match", "method", "path", "query")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers  # names lower-cased; repeated headers joined with ", "
        self.body = body
        self.match: dict[str, str] = {}


class Response:
    """An answer. ``raw_headers`` is an optional block of ready-encoded
    ``Name: value\r\n`` lines, for answers whose headers never change (a cached
    answer keeps its own, so the hit path encodes nothing)."""

    __slots__ = ("body", "content_type", "headers", "raw_headers", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        content_type: str | None = "application/json",
        headers: dict[str, str] | None = None,
        raw_headers: bytes = b"",
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
    rendered by the server's ``on_error`` like any other error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        on_error: ErrorRenderer,
        max_body: int = 64 << 20,
        request_timeout: float = 30.0,
        keepalive_timeout: float = 75.0,
        server_name: str = "affinity-serve",
    ) -> None:
        self.handler = handler
        self.on_error = on_error
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.keepalive_timeout = keepalive_timeout
        self.server_name = server_name.encode()
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.date = b""
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, backlog: int = 2048) -> int:
        """Listen on host:port (0: any free port); returns the bound port."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Connection(self), host, port, backlog=backlog, reuse_address=True)
        self._servers.append(server)
        self._tick()
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        return int(server.sockets[0].getsockname()[1])

    def _tick(self) -> None:
        self.date = email.utils.formatdate(usegmt=True).encode()

    async def _sweep(self) -> None:
        """Once a second: refresh the Date header, time out slow and idle connections."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            self._tick()
            now = loop.time()
            for conn in list(self.connections):
                conn.check_timeouts(now)

    async def shutdown(self, grace: float = 30.0) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.close_when_idle()
        if self.tasks:
            _, pending = await asyncio.wait(list(self.tasks), timeout=grace)
            for task in pending:
                task.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for conn in list(self.connections):
            conn.abort()
        for server in self._servers:
            await server.wait_closed()


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.loop = asyncio.get_running_loop()
        self.queue: collections.deque[tuple[Request, bool]] = collections.deque()
        self.busy = False
        self.closing = False
        self.paused = False  # the transport asked us to stop writing
        self.reading_paused = False  # we stopped reading: too many pipelined requests
        self.close_after = False
        self.last_active = self.loop.time()
        self.request_started: float | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._reject: HttpError | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        self.last_active = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(HttpError(400, "protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:
            reject = self._reject or (exc.__context__ if isinstance(exc.__context__, HttpError) else None)
            self._refuse(reject or HttpError(400, "malformed HTTP request"))

    def pause_writing(self) -> None:
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None and not self.closing and not self.reading_paused:
            self.transport.resume_reading()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.request_started = self.loop.time()
        self._url = b""
        self._headers = {}
        self._header_bytes = 0
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_URL:
            self._fail(414, "request URL is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADERS:
            self._fail(431, "request headers are too large")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self._headers.get(key)
        self._headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.server.max_body:
            self._fail(413, f"request body is over the limit of {self.server.max_body} bytes")
        if self._headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.server.max_body:
            self._fail(413, f"request body is over the limit of {self.server.max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.request_started = None
        path, _, query = self._url.decode("latin-1").partition("?")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(self.parser.get_method().decode("latin-1"), path, query, self._headers, body)
        self.queue.append((request, self.parser.should_keep_alive()))
        if len(self.queue) > MAX_PIPELINED and self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        if not self.busy:
            self._run()

    # handling

    def _fail(self, status: int, message: str) -> None:
        self._reject = HttpError(status, message)
        raise self._reject

    def _run(self) -> None:
        while self.queue and not self.busy and not self.closing:
            request, keep_alive = self.queue.popleft()
            try:
                result = self.server.handler(request)
            except Exception as exc:
                result = self.server.on_error(exc)
            if isinstance(result, Response):
                self._write(request, result, keep_alive)
            else:
                self.busy = True
                task = self.loop.create_task(self._finish(request, result, keep_alive))
                self.server.tasks.add(task)
                task.add_done_callback(self.server.tasks.discard)
        if self.reading_paused and not self.queue and self.transport is not None and not self.closing:
            self.reading_paused = False
            if not self.paused:
                self.transport.resume_reading()

    async def _finish(self, request: Request, pending: Awaitable[Response], keep_alive: bool) -> None:
        try:
            response = await pending
        except Exception as exc:
            response = self.server.on_error(exc)
        self.busy = False
        self._write(request, response, keep_alive and not self.close_after)
        self._run()

    def _write(self, request: Request, response: Response, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or self.closing:
            return
        body = response.body
        parts = [
            b"HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\nContent-Length: %d\r\n"
            % (response.status, _REASONS.get(response.status, b"Unknown"), self.server.server_name,
               self.server.date, len(body)),
        ]  # fmt: skip
        if response.content_type is not None:
            parts.append(b"Content-Type: %s\r\n" % response.content_type.encode("latin-1"))
        if response.headers:
            for name, value in response.headers.items():
                parts.append(f"{name}: {value}\r\n".encode("latin-1"))
        if response.raw_headers:
            parts.append(response.raw_headers)
        if not keep_alive:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        if request.method != "HEAD":
            parts.append(body)
        transport.write(b"".join(parts))
        self.last_active = self.loop.time()
        if not keep_alive:
            self.closing = True
            transport.close()

    def _refuse(self, reject: HttpError) -> None:
        """Answer a request the server could not read, then close the connection."""
        if self.busy:  # an earlier request's answer is still owed: just stop reading
            self.close_when_idle()
            return
        request = Request("GET", "", "", {}, b"")
        self._write(request, self.server.on_error(reject), keep_alive=False)

    def check_timeouts(self, now: float) -> None:
        if self.request_started is not None and now - self.request_started > self.server.request_timeout:
            self._refuse(HttpError(408, "request not received in time"))
        elif not self.busy and not self.queue and now - self.last_active > self.server.keepalive_timeout:
            self.abort()

    def close_when_idle(self) -> None:
        if not self.busy and not self.queue:
            self.abort()
        else:
            self.queue.clear()
            self.close_after = True

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()
