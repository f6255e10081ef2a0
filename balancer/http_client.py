"""The balancer's upstream HTTP/1.1 client: pooled keep-alive connections per worker.

Why not aiohttp's client: measured here, a balancer forwarding through
aiohttp's ``ClientSession`` to a backend that answers instantly managed ~2.3k
requests a second (~440 us a request), where nginx did ~19k; this client sends
on asyncio protocols with httptools' response parser (docs/benchmarks.md).

- One pool per worker, at most ``limit`` connections; idle ones are reused
  LIFO (the most recently used socket is the least likely to have been closed
  by the server) and closed after ``idle_timeout``.
- A try fails with ``UpstreamError``: "connect" (refused or over
  ``connect_timeout``), "timeout" (no whole answer within ``try_timeout``),
  "reset" (closed or garbled before the whole answer). A request that fails on
  a *reused* connection before any response byte is sent once more on a fresh
  one: the server may have closed an idle keep-alive socket as we wrote.
- Per-try timeouts are deadlines that one sweeper checks every ``TICK``
  seconds (a set insert per request, not a timer handle: ~0.1 us, not ~1.8).
- An answer over ``max_answer`` bytes (head and body, counted as they arrive,
  refused from its Content-Length when it has one) fails the try with
  "too_large" and closes the connection. Bytes that arrive on a connection
  with no request outstanding (an idle pooled one, or after the answer in
  the same read) close it: they are never read as the next answer.
"""

from __future__ import annotations

import asyncio
import collections

import httptools

from balancer.errors import UpstreamError
from balancer.transport import PASSED_HEADERS, UpstreamResponse

_PASSED = {h.lower().encode(): h for h in PASSED_HEADERS}
TICK = 0.1
MAX_HEAD = 64 << 10  # an answer's status line and headers


class _Unsolicited(Exception):
    """An answer began with no request outstanding."""


class _TooLarge(Exception):
    """An answer's Content-Length is over the limit."""


class _Conn(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_busy",
        "_headers",
        "_length",
        "_received",
        "_waiter",
        "closed",
        "deadline",
        "got_bytes",
        "keep_alive",
        "last_used",
        "loop",
        "max_answer",
        "parser",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, busy: set[_Conn], max_answer: int) -> None:
        self.loop = loop
        self._busy = busy  # the client's set of connections awaiting an answer
        self.max_answer = max_answer
        self._received = 0
        self._length = 0
        self.deadline = 0.0
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.keep_alive = True
        self.got_bytes = False
        self.last_used = loop.time()
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail("reset")

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            self.close()  # unsolicited: never the next request's answer
            return
        self.got_bytes = True
        self._received += len(data)
        if self._received > self.max_answer + MAX_HEAD:
            self._fail("too_large")
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail("too_large" if isinstance(exc.__context__, _TooLarge) else "reset")
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost fails any pending request

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._waiter is None:
            raise _Unsolicited  # a second answer after the one asked for

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        passed = _PASSED.get(lowered)
        if passed is not None:
            self._headers[passed] = value.decode("latin-1")
        elif lowered == b"content-length":
            self._length = int(value)  # llhttp has checked it is one decimal number

    def on_headers_complete(self) -> None:
        if self._length > self.max_answer:
            raise _TooLarge

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._headers, self._body, self._length = {}, [], 0  # an interim answer: the final one follows
            return
        self.keep_alive = self.parser.should_keep_alive() and status != 101
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        response = UpstreamResponse(status, body, self._headers)
        waiter = self._waiter
        self._finish()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # requests

    def request(self, data: bytes, timeout: float) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None
        self.got_bytes = False
        self._received = 0
        self._length = 0
        self._headers = {}
        self._body = []
        self._waiter = self.loop.create_future()
        self.deadline = self.loop.time() + timeout
        self._busy.add(self)
        self.transport.write(data)
        return self._waiter

    def _finish(self) -> None:
        self._waiter = None
        self._busy.discard(self)

    def expire(self) -> None:
        self._fail("timeout")

    def _fail(self, kind: str) -> None:
        waiter = self._waiter
        self._finish()
        if waiter is not None and not waiter.done():
            waiter.set_exception(UpstreamError(kind))
            if kind in ("timeout", "too_large"):
                self.close()  # the rest of the answer may still come: this socket is unusable

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Pool:
    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host = host
        self.port = port
        self.host_header = f"{host}:{port}".encode()
        self.idle: collections.deque[_Conn] = collections.deque()
        self.slots = asyncio.Semaphore(limit)


class HttpClient:
    """Implements ``balancer.transport.Transport``."""

    def __init__(
        self,
        limit: int = 512,
        connect_timeout: float = 1.0,
        try_timeout: float = 60.0,
        idle_timeout: float = 30.0,
        max_answer: int = 64 << 20,
    ) -> None:
        if max_answer < 1:
            raise ValueError("max_answer must be positive")
        self.limit = limit
        self.max_answer = max_answer
        self.connect_timeout = connect_timeout
        self.try_timeout = try_timeout
        self.idle_timeout = idle_timeout
        self._pools: dict[str, _Pool] = {}
        self._busy: set[_Conn] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the sweeper runs on (got once, not a
        # get_running_loop() per request: on Python 3.11 each one is a getpid() system call)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK)
            now = loop.time()
            for conn in [c for c in self._busy if c.deadline <= now]:
                conn.expire()

    def _pool(self, base_url: str) -> _Pool:
        pool = self._pools.get(base_url)
        if pool is None:
            host, _, port = base_url.removeprefix("http://").rpartition(":")
            pool = self._pools[base_url] = _Pool(host, int(port), self.limit)
        return pool

    async def _connect(self, pool: _Pool) -> _Conn:
        loop = asyncio.get_running_loop()
        connecting = loop.create_connection(lambda: _Conn(loop, self._busy, self.max_answer), pool.host, pool.port)
        try:
            _, conn = await asyncio.wait_for(connecting, self.connect_timeout)
        except (TimeoutError, OSError):
            raise UpstreamError("connect") from None
        return conn

    def _idle(self, pool: _Pool, now: float) -> _Conn | None:
        while pool.idle:
            conn = pool.idle.pop()
            if not conn.closed and now - conn.last_used < self.idle_timeout:
                return conn
            conn.close()
        return None

    async def send(
        self,
        base_url: str,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
        try_timeout: float | None = None,
    ) -> UpstreamResponse:
        pool = self._pool(base_url)
        payload = body or b""
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n" % (
            method.encode(), path.encode(), pool.host_header, len(payload)
        )  # fmt: skip
        if content_type:
            head += b"Content-Type: %s\r\n" % content_type.encode("latin-1")
        for name, value in (headers or {}).items():
            head += b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
        data = head + b"\r\n" + payload
        if try_timeout is None:
            try_timeout = self.try_timeout
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
            self._sweeper = loop.create_task(self._sweep())
        async with pool.slots:
            conn = self._idle(pool, loop.time())
            reused = conn is not None
            if conn is None:
                conn = await self._connect(pool)
            try:
                try:
                    response = await conn.request(data, try_timeout)
                except UpstreamError as exc:
                    if not (reused and exc.kind == "reset" and not conn.got_bytes):
                        raise
                    conn.close()  # a stale keep-alive socket: once more on a fresh one
                    conn = await self._connect(pool)
                    response = await conn.request(data, try_timeout)
            except BaseException:
                conn.close()
                raise
            if conn.keep_alive and not conn.closed:
                conn.last_used = loop.time()
                pool.idle.append(conn)
            else:
                conn.close()
            return response

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        self._loop = None
        for pool in self._pools.values():
            while pool.idle:
                pool.idle.pop().close()
        self._pools.clear()
        await asyncio.sleep(0)  # let the transports finish closing
