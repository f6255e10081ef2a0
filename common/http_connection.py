"""One client connection of the HTTP/1.1 server: read, queue, answer in order.

Reading. httptools (llhttp) parses; callbacks build the request. Limits hold
while bytes arrive, not after a field completes: httptools buffers a header
line internally until it ends (each fragment re-copies it), so the bytes fed
while a request's head is incomplete are counted per fed piece, and a line
that outgrows its limit is refused at once. Input is fed in pieces of at most
``PIECE`` bytes, which bounds both how far that count can overshoot and how
many pipelined requests one piece can queue.

Answering. Exactly one answer per request, in request order, one handler at a
time. A request the server cannot read (malformed, over a limit, too slow) gets
one error answer after the answers owed to earlier requests, then the
connection closes, lingering a moment to discard unread input so the client
sees the answer rather than a reset.

Clients that do not read: while the transport's write buffer is over its
high-water mark, or ``max_pipelined`` requests wait for answers, no handler
runs and nothing more is read or parsed (what was read is held back), so a
connection holds at most one answer over the mark plus one read; a buffer that
makes no progress for ``write_timeout`` aborts the connection.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import httptools

from common.http_message import HttpError, Request, Response, UnsafeHeader, render_head

if TYPE_CHECKING:
    from common.http_server import HttpServer

PIECE = 8 << 10  # most bytes fed to the parser at once
CHUNK_FRAMING = 24  # a chunk's own framing bytes (hex size, CRLFs) that do not count toward the head budget
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REFUSED = Request("GET", "", "", {}, b"")  # stands for a request that could not be read
_RETRY = {"Retry-After": "1"}

QueueEntry = tuple[Request, bool, HttpError | None]


def origin_form(target: str) -> str:
    """The path and query of an absolute-form request target (RFC 9112, 3.2.2)."""
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return target  # asterisk-form or garbage: no route will match it
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    path = rest[cut:]
    return path if path.startswith("/") else "/" + path


class Connection(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_body_size",
        "_chunks",
        "_continue",
        "_fields",
        "_header_bytes",
        "_headers",
        "_headers_done",
        "_meta",
        "_reject",
        "_url",
        "active",
        "busy",
        "close_after",
        "closing",
        "idle_limit",
        "last_active",
        "limits",
        "linger_since",
        "parser",
        "pending",
        "queue",
        "read_paused",
        "refused",
        "request_started",
        "server",
        "stalled_since",
        "stalled_size",
        "transport",
        "write_paused",
    )

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: collections.deque[QueueEntry] = collections.deque()
        self.busy = False  # a handler is running
        self.closing = False
        self.refused = False  # a request could not be read: input is discarded from now on
        self.write_paused = False  # the transport's write buffer is over its high-water mark
        self.read_paused = False
        self.close_after = False  # close once the queued answers are written
        self.pending: memoryview | None = None  # input read but held back while answers catch up
        self.active = False  # wrote since the last sweep
        self.last_active = server.clock
        self.idle_limit = self.limits.header_timeout  # a new connection gets its first request quickly
        self.request_started: float | None = None  # set while a request is being read
        self.stalled_since = 0.0
        self.stalled_size = 0
        self.linger_since: float | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._headers_done = False
        self._header_bytes = 0
        self._fields = 0
        self._meta = 0
        self._chunks = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._continue = False  # a 100 Continue is owed once this request is next to be answered
        self._reject: HttpError | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        if len(server.connections) >= self.limits.max_connections:
            self.refused = self.closing = True
            busy = self._render(HttpError(503, "too many connections", _RETRY))
            self.transport.write(render_head(busy, server.preamble, keep_alive=False) + busy.body)  # type: ignore[union-attr]
            self.transport.close()  # type: ignore[union-attr]
            return
        self.transport.set_write_buffer_limits(high=self.limits.write_buffer_high)  # type: ignore[union-attr]
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Free everything this connection holds (the running handler frees its own request)."""
        self.server.connections.discard(self)
        self.closing = True
        freed = sum(len(request.body) for request, _, _ in self.queue)
        if self.request_started is not None:
            freed += self._body_size
            self.request_started = None
        self.server.buffered_body -= freed
        self.queue.clear()
        self.pending = None
        self._body = []

    def eof_received(self) -> bool:
        if self.refused or not (self.busy or self.queue):
            return False  # close
        self.close_after = True  # answer what was asked, then close
        return True

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # lingering after a refusal: discard
        if len(data) <= PIECE and self.pending is None:
            self._feed(data)
            if self.queue:
                self._hold(None)
        else:
            self._feed_all(data)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.stalled_since = self.server.clock
        self.stalled_size = 0
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._run()

    # reading

    def _feed_all(self, data: bytes | memoryview) -> None:
        """Feed piece by piece, holding back the rest as soon as answers must catch up."""
        if self.pending is not None:  # a read that raced a pause: keep order
            data = memoryview(bytes(self.pending) + bytes(data))
            self.pending = None
        view = memoryview(data)
        for start in range(0, len(view), PIECE):
            if not self._feed(view[start : start + PIECE]) or self.refused:
                return
            if self.write_paused or len(self.queue) > self.limits.max_pipelined:
                self._hold(view[start + PIECE :])
                return

    def _hold(self, rest: memoryview | None) -> None:
        """Stop reading (keeping ``rest``) while answers are owed and cannot be written."""
        if not (self.write_paused or len(self.queue) > self.limits.max_pipelined):
            return
        if rest:
            self.pending = rest
        self._pause_reading()

    def _pause_reading(self) -> None:
        if not self.read_paused and not self.closing and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def _catch_up(self) -> None:
        """Parse what was held back, then read again, once answers have caught up."""
        if self.write_paused or self.closing or len(self.queue) > self.limits.max_pipelined:
            return
        if self.pending is not None:
            held, self.pending = self.pending, None
            self._feed_all(held)
            if self.pending is not None or self.closing:
                return
        if self.read_paused and not self.write_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    def _feed(self, piece: bytes | memoryview) -> bool:
        """Parse one piece and count its non-body bytes; False once the request is refused."""
        while True:
            body_before = self._body_size
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserUpgrade as exc:
                # An Upgrade without a body (see on_headers_complete) is ignored as RFC 9110
                # allows: the request was answered as plain HTTP/1.1; parse on after it.
                piece = piece[exc.args[0] :]
                if piece:
                    continue
            except httptools.HttpParserError as exc:
                context = exc.__context__
                reject = self._reject or (context if isinstance(context, HttpError) else None)
                self._refuse(reject or HttpError(400, "malformed HTTP request"))
                return False
            break
        if self.request_started is not None:
            return self._count(len(piece), body_before)
        return True

    def _count(self, fed: int, body_before: int) -> bool:
        """Bound the non-body bytes of the request being read: the line in progress
        while in the head, the total (trailers, chunk extensions) afterwards."""
        if self._meta < 0:  # the request began in this piece (the count may include a little before it)
            self._meta = fed - self._body_size
        else:
            self._meta += fed - (self._body_size - body_before)
        limits = self.limits
        if not self._headers_done:
            line = self._meta - self._header_bytes - 4 * self._fields
            if line > limits.max_url + limits.max_header_line + 64 + PIECE:
                self._refuse(HttpError(431, "a request header line is too large"))
                return False
        elif self._meta > limits.head_budget + PIECE + CHUNK_FRAMING * self._chunks:
            self._refuse(HttpError(431, "request trailers or chunk extensions are too large"))
            return False
        return True

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.request_started = self.server.clock
        self._url = b""
        self._headers = {}
        self._headers_done = False
        self._header_bytes = 0
        self._fields = 0
        self._meta = -1
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_url:
            self._fail(414, "request URL is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self._header_bytes += size
        self._fields += 1
        limits = self.limits
        if size > limits.max_header_line or self._header_bytes > limits.max_header_bytes:
            self._fail(431, "request headers are too large")
        if self._fields > limits.max_header_fields:
            self._fail(431, "too many request header fields")
        if self._headers_done:
            return  # a trailer: counted above, never merged into the headers
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self._headers.get(key)
        if old is None:
            self._headers[key] = text
        elif key == "host":
            self._fail(400, "more than one Host header")
        else:
            self._headers[key] = f"{old}, {text}"

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._chunks = 0
        headers = self._headers
        parser = self.parser
        if "host" not in headers and parser.get_http_version() != "1.0":
            self._fail(400, "an HTTP/1.1 request needs a Host header")
        length = headers.get("content-length")
        if length is not None:  # llhttp has checked it is one decimal number
            self._check_body(int(length))
        elif "transfer-encoding" in headers and parser.get_http_version() == "1.0":
            self._fail(400, "HTTP/1.0 requests cannot use chunked framing")
        if "expect" in headers:
            self._expect(headers["expect"])
        if parser.should_upgrade():
            if parser.get_method() == b"CONNECT":
                self._fail(501, "CONNECT is not supported")
            if length not in (None, "0") or "transfer-encoding" in headers:
                self._fail(400, "protocol upgrades are not supported")  # its body would be skipped

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_body(self, body: bytes) -> None:
        size = len(body)
        self._body_size += size
        server = self.server
        server.buffered_body += size
        if self._body_size > self.limits.max_body:
            self._fail(413, f"request body is over the limit of {self.limits.max_body} bytes")
        if server.buffered_body > self.limits.max_buffered_body:
            self._fail(503, "the server is buffering too many request bodies", _RETRY)
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.request_started = None
        self._continue = False
        target = self._url.decode("latin-1")
        if target[:1] != "/":
            target = origin_form(target)
        path, _, query = target.partition("?")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []
        request = Request(self.parser.get_method().decode("latin-1"), path, query, self._headers, body)
        self.queue.append((request, self.parser.should_keep_alive(), None))
        if not self.busy:
            self._run()

    def _check_body(self, size: int) -> None:
        limits = self.limits
        if size > limits.max_body:
            self._fail(413, f"request body is over the limit of {limits.max_body} bytes")
        if self.server.buffered_body + size > limits.max_buffered_body:
            self._fail(503, "the server is buffering too many request bodies", _RETRY)

    def _expect(self, expect: str) -> None:
        """``100 Continue`` only for HTTP/1.1, and only once this request is next to be
        answered: never ahead of an answer still owed to an earlier pipelined request."""
        if expect.lower() != "100-continue" or self.parser.get_http_version() != "1.1":
            return
        if self.busy or self.queue:
            self._continue = True
        elif self.transport is not None:
            self.transport.write(_CONTINUE)

    def _fail(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._reject = HttpError(status, message, headers)
        raise self._reject

    # answering

    def _render(self, exc: BaseException) -> Response:
        response = self.server.on_error(exc)
        if isinstance(exc, HttpError) and exc.headers:
            response.headers = {**(response.headers or {}), **exc.headers}
        return response

    def _run(self) -> None:
        queue = self.queue
        while queue and not self.busy and not self.closing and not self.write_paused:
            request, keep_alive, reject = queue.popleft()
            if reject is not None:
                self._write(request, self._render(reject), keep_alive=False)
                break
            try:
                result = self.server.handler(request)
            except Exception as exc:
                result = self._render(exc)
            if isinstance(result, Response):
                self._write(request, result, keep_alive)
                if request.body:
                    self.server.buffered_body -= len(request.body)
            else:
                self.busy = True
                task = asyncio.get_running_loop().create_task(self._finish(request, result, keep_alive))
                self.server.tasks.add(task)
                task.add_done_callback(self.server.tasks.discard)
        if self.busy or self.closing:
            return
        if self._continue and not queue and self.transport is not None:
            self._continue = False
            self.transport.write(_CONTINUE)
        if self.read_paused:
            self._catch_up()

    async def _finish(self, request: Request, pending: Awaitable[Response], keep_alive: bool) -> None:
        try:
            try:
                response = await pending
            except Exception as exc:
                response = self._render(exc)
            self.busy = False
            self._write(request, response, keep_alive)
        finally:
            self.busy = False  # also when cancelled at shutdown
            self.server.buffered_body -= len(request.body)
        self._run()

    def _write(self, request: Request, response: Response, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or self.closing:
            return
        if self.close_after and not self.queue:
            keep_alive = False
        try:
            head = render_head(response, self.server.preamble, keep_alive)
        except UnsafeHeader as exc:
            response = self._render(exc)
            head = render_head(response, self.server.preamble, keep_alive)
        transport.write(head if request.method == "HEAD" else head + response.body)
        self.active = True
        if not keep_alive:
            self.closing = True
            if self.refused:
                self._linger()
            else:
                transport.close()

    def _refuse(self, reject: HttpError) -> None:
        """One answer for a request that could not be read, after the answers owed
        to earlier requests; input is discarded from now on and the connection closes."""
        self.refused = True
        self.pending = None
        self._continue = False
        if self.request_started is not None:
            self.server.buffered_body -= self._body_size
            self._body = []
            self.request_started = None
        self.queue.append((_REFUSED, False, reject))
        if not self.busy:
            self._run()

    def _linger(self) -> None:
        """Half-close after the last answer and discard input for a moment, so a client
        still sending its request reads the answer instead of a reset."""
        transport = self.transport
        assert transport is not None
        self.linger_since = self.server.clock
        if transport.can_write_eof():
            transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()

    # time

    def check_timeouts(self, now: float) -> None:
        """Called once a second by the server's sweeper."""
        if self.active:
            self.active = False
            self.last_active = now
            self.idle_limit = self.limits.keepalive_timeout
        limits = self.limits
        if self.linger_since is not None:
            if now - self.linger_since > limits.linger_timeout:
                self.abort()
        elif self.write_paused:
            size = self.transport.get_write_buffer_size() if self.transport is not None else 0
            if self.stalled_size == 0 or size < self.stalled_size:
                self.stalled_since, self.stalled_size = now, size  # the client is reading
            elif now - self.stalled_since > limits.write_timeout:
                self.abort()
        elif self.request_started is not None and not self.read_paused and not self.refused:
            waited = now - self.request_started
            if waited > limits.request_timeout or (waited > limits.header_timeout and not self._headers_done):
                self._refuse(HttpError(408, "request not received in time"))
        elif not self.busy and not self.queue and now - self.last_active > self.idle_limit:
            self.abort()

    def close_when_idle(self) -> None:
        """Shutdown: finish the answer being made, drop the rest, then close."""
        freed = sum(len(request.body) for request, _, _ in self.queue)
        self.server.buffered_body -= freed
        self.queue.clear()
        if not self.busy:
            self.abort()
        else:
            self.close_after = True

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()
