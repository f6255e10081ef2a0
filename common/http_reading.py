"""Reading requests off a connection within limits: the parser side of the server.

httptools (llhttp) parses; its callbacks build the request. Limits hold while
bytes arrive, not after a field completes: httptools buffers a header line
internally until it ends (re-copying it on every fragment), so the bytes fed
while a request's head is incomplete are counted per fed piece, and a line
that outgrows its limit is refused at once; after the head, the same count
bounds trailers and chunk extensions. Input is fed in pieces of at most
``PIECE`` bytes, which bounds both how far that count can overshoot and how
many pipelined requests one piece can queue; while answers cannot be written,
what was read is held back unparsed and the transport stops reading.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING

import httptools

from common.http_message import HttpError, Request

if TYPE_CHECKING:
    from common.http_limits import HttpLimits
    from common.http_server import HttpServer

PIECE = 8 << 10  # most bytes fed to the parser at once
CHUNK_FRAMING = 24  # a chunk's own framing bytes (hex size, CRLFs) that do not count toward the head budget
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
RETRY = {"Retry-After": "1"}

QueueEntry = tuple[Request, bool, HttpError | None]  # request, keep-alive, or why it could not be read


def origin_form(target: str) -> str:
    """The path and query of an absolute-form request target (RFC 9112, 3.2.2)."""
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return target  # asterisk-form or garbage: no route will match it
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    path = rest[cut:]
    return path if path.startswith("/") else "/" + path


class RequestReader(asyncio.Protocol):
    """The reading half of a connection; ``Connection`` adds the answering half."""

    __slots__ = (
        "_body",
        "_body_size",
        "_chunks",
        "_continue",
        "_counted_body",
        "_fields",
        "_header_bytes",
        "_headers",
        "_headers_done",
        "_meta",
        "_reject",
        "_url",
        "busy",
        "closing",
        "limits",
        "parser",
        "pending",
        "queue",
        "read_paused",
        "refused",
        "request_started",
        "server",
        "transport",
        "write_paused",
    )

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits: HttpLimits = server.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: collections.deque[QueueEntry] = collections.deque()
        self.busy = False  # a handler is running
        self.closing = False
        self.refused = False  # a request could not be read: input is discarded from now on
        self.write_paused = False  # the transport's write buffer is over its high-water mark
        self.read_paused = False
        self.pending: memoryview | None = None  # input read but held back while answers catch up
        self.request_started: float | None = None  # set while a request is being read
        self._url = b""
        self._headers: dict[str, str] = {}
        self._headers_done = False
        self._header_bytes = 0
        self._fields = 0
        self._meta = 0
        self._counted_body = 0
        self._chunks = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._continue = False  # a 100 Continue is owed once this request is next to be answered
        self._reject: HttpError | None = None

    # what the answering half provides

    def _run(self) -> None:
        """Answer the queued requests that can be answered now."""
        raise NotImplementedError

    def _refuse(self, reject: HttpError) -> None:
        """Answer, once and in order, a request that could not be read; then close."""
        raise NotImplementedError

    # reading

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # lingering after a refusal: discard
        if len(data) > PIECE or self.pending is not None:
            self._feed_all(data)
            return
        # The common case, inline: one small read holding whole requests.
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if not self._parse_error(exc, data):
                return
        if self.request_started is not None and not self._count(len(data)):
            return
        if self.queue:
            self._hold(None)

    def _feed_all(self, data: bytes | memoryview) -> None:
        """Feed piece by piece, holding back the rest as soon as answers must catch up."""
        if self.pending is not None:  # a read that raced a pause: keep order
            data = memoryview(bytes(self.pending) + bytes(data))
            self.pending = None
        view = memoryview(data)
        for start in range(0, len(view), PIECE):
            if not self._feed(view[start : start + PIECE]):
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
        try:
            self.parser.feed_data(piece)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if not self._parse_error(exc, piece):
                return False
        if self.request_started is not None:
            return self._count(len(piece))
        return True

    def _parse_error(self, exc: Exception, piece: bytes | memoryview) -> bool:
        """Refuse what cannot be read; True when parsing went on (an ignored Upgrade)."""
        while isinstance(exc, httptools.HttpParserUpgrade):
            # An Upgrade without a body (see on_headers_complete) is ignored as RFC 9110
            # allows: the request was answered as plain HTTP/1.1; parse on after it.
            piece = piece[exc.args[0] :]
            if not piece:
                return True
            try:
                self.parser.feed_data(piece)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as again:
                exc = again
            else:
                return True
        context = exc.__context__
        reject = self._reject or (context if isinstance(context, HttpError) else None)
        self._refuse(reject or HttpError(400, "malformed HTTP request"))
        return False

    def _count(self, fed: int) -> bool:
        """Bound the non-body bytes of the request being read: the line in progress
        while in the head, the total (trailers, chunk extensions) afterwards. ``fed``
        may include bytes of the request before (at most one piece): hence the slack."""
        body = self._body_size - self._counted_body
        self._counted_body = self._body_size
        if self._meta < 0:  # the request began in this piece
            self._meta = fed - body
        else:
            self._meta += fed - body
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
        self._counted_body = 0
        self._body = []
        self._body_size = 0
        self._continue = False

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
            size = int(length)
            limits = self.limits
            if size > limits.max_body or self.server.buffered_body + size > limits.max_buffered_body:
                self._body_over(size)
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
        limits = self.limits
        if self._body_size > limits.max_body or server.buffered_body > limits.max_buffered_body:
            self._body_over(self._body_size)
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.request_started = None
        target = self._url.decode("latin-1")
        if target[:1] != "/":
            target = origin_form(target)
        path, _, query = target.partition("?")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(self.parser.get_method().decode("latin-1"), path, query, self._headers, body)
        self.queue.append((request, self.parser.should_keep_alive(), None))
        if not self.busy:
            self._run()

    def _body_over(self, size: int) -> None:
        """Refuse a body over the per-request limit (413) or the process-wide one (503)."""
        if size > self.limits.max_body:
            self._fail(413, f"request body is over the limit of {self.limits.max_body} bytes")
        self._fail(503, "the server is buffering too many request bodies", RETRY)

    def _expect(self, expect: str) -> None:
        """``100 Continue`` only for HTTP/1.1, and only once this request is next to be
        answered: never ahead of an answer still owed to an earlier pipelined request."""
        if expect.lower() != "100-continue" or self.parser.get_http_version() != "1.1":
            return
        if self.busy or self.queue:
            self._continue = True
        elif self.transport is not None:
            self.transport.write(CONTINUE)

    def _fail(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._reject = HttpError(status, message, headers)
        raise self._reject
