"""One client connection of the HTTP/1.1 server: answer in order, once, within limits.

Exactly one answer per request, in request order, one handler at a time (the
reading half, ``RequestReader``, queues the requests). A request the server
cannot read (malformed, over a limit, too slow) gets one error answer after
the answers owed to earlier requests; then the connection closes, lingering a
moment to discard unread input so the client reads the answer, not a reset.

Clients that do not read: while the transport's write buffer is over its
high-water mark no handler runs and nothing more is read or parsed, so a
connection holds at most one answer over the mark plus one read; a buffer
that makes no progress for ``write_timeout`` aborts the connection, and
whatever a connection held (queued requests, a body half read) is released
when it goes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, cast

from common.http_message import (
    HttpError,
    Request,
    Response,
    UnsafeHeader,
    content_type_line,
    encode_headers,
    render_head,
    status_line,
)
from common.http_reading import CONTINUE, RETRY, RequestReader

if TYPE_CHECKING:
    from common.http_server import HttpServer

_REFUSED = Request("GET", "", "", {}, b"")  # stands for a request that could not be read


# On shutdown, how long a just-accepted connection may take to send its first request.
FIRST_REQUEST_GRACE = 1.0


class Connection(RequestReader):
    __slots__ = (
        "active",
        "answered",
        "close_after",
        "idle_limit",
        "last_active",
        "linger_since",
        "stalled_since",
        "stalled_size",
    )

    def __init__(self, server: HttpServer) -> None:
        super().__init__(server)
        self.close_after = False  # close once the queued answers are written
        self.answered = False  # has written an answer (a kept-alive connection, not a fresh one)
        self.active = False  # wrote since the last sweep
        self.last_active = server.clock
        self.idle_limit = self.limits.header_timeout  # a new connection gets its first request quickly
        self.stalled_since = 0.0
        self.stalled_size = 0
        self.linger_since: float | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = stream = cast(asyncio.Transport, transport)
        server = self.server
        if len(server.connections) >= self.limits.max_connections:
            self.refused = self.closing = True  # one answer, whatever the client sends
            busy = self._render(HttpError(503, "too many connections", RETRY))
            stream.write(render_head(busy, server.preamble, keep_alive=False) + busy.body)
            stream.close()
            return
        stream.set_write_buffer_limits(high=self.limits.write_buffer_high)
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
        """A client that half-closes still gets the answers it asked for, then the close."""
        if self.linger_since is not None or not (self.busy or self.queue):
            return False  # close
        self.close_after = True
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        self.stalled_since = self.server.clock
        self.stalled_size = 0
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._run()

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
                loop = self.server.loop or asyncio.get_running_loop()
                task = loop.create_task(self._finish(request, result, keep_alive))
                self.server.tasks.add(task)
                task.add_done_callback(self.server.tasks.discard)
        if self.busy or self.closing:
            return
        if self._continue and not queue and self.request_started is not None and self.transport is not None:
            self._continue = False
            self.transport.write(CONTINUE)
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
        body = response.body
        head = b"%s%sContent-Length: %d\r\n" % (
            status_line(response.status), self.server.preamble, len(body)
        )  # fmt: skip
        try:
            if response.content_type is not None:
                head += content_type_line(response.content_type)
            if response.headers:
                head += encode_headers(response.headers)
        except UnsafeHeader as exc:
            response = self._render(exc)
            body = response.body
            head = render_head(response, self.server.preamble, keep_alive)
        else:
            if response.raw_headers is not None:
                head += response.raw_headers.raw
            head += b"\r\n" if keep_alive else b"Connection: close\r\n\r\n"
        transport.write(head if request.method == "HEAD" else head + body)
        self.active = self.answered = True
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
        """Shutdown: answer every request this connection has received or is receiving,
        then close. One that has carried no request yet (just accepted: its client has
        likely sent one already) gets ``FIRST_REQUEST_GRACE`` for it; an idle kept-alive
        one closes now (its client retries elsewhere). The server aborts whatever is
        still open after its grace."""
        if self.busy or self.queue or self.request_started is not None:
            self.close_after = True
        elif not self.answered and self.transport is not None and not self.closing:
            self.close_after = True
            asyncio.get_running_loop().call_later(FIRST_REQUEST_GRACE, self._close_if_unused)
        elif self.transport is not None:
            self.closing = True
            self.transport.close()

    def _close_if_unused(self) -> None:
        if not self.busy and not self.queue and self.request_started is None and self.transport is not None:
            self.closing = True
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()
