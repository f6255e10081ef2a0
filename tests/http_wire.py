"""Helpers for HTTP tests over real loopback sockets: an in-process server with a
few routes, and a raw client that sends exact bytes and reads what comes back."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from common.http_router import Router
from common.http_server import HttpLimits, HttpServer, Request, Response
from common.rest import render_error

HOST = b"Host: t\r\n"
STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def run(main: Callable[[], Awaitable[Any]], timeout: float = 30) -> Any:
    return asyncio.run(asyncio.wait_for(main(), timeout))


def statuses(received: bytes) -> list[int]:
    """Every status line's code, in order (interim 100s included)."""
    return [int(code) for code in STATUS_LINE.findall(received)]


def final_statuses(received: bytes) -> list[int]:
    return [code for code in statuses(received) if code >= 200]


def routes(calls: list[Request] | None = None) -> Router:
    """/echo/{name} (GET, POST) echoes the body or path; /slow/{seconds}; /big/{kib}
    answers that many KiB; every request handled is appended to ``calls``."""
    router = Router()
    seen = calls if calls is not None else []

    def echo(req: Request) -> Response:
        seen.append(req)
        return Response(200, req.body or req.path.encode(), "text/plain", {"X-Name": req.match.get("name", "")})

    async def slow(req: Request) -> Response:
        seen.append(req)
        await asyncio.sleep(float(req.match["seconds"]))
        return Response(200, b"slow " + req.match["seconds"].encode(), "text/plain")

    def big(req: Request) -> Response:
        seen.append(req)
        return Response(200, b"x" * (int(req.match["kib"]) << 10), "text/plain")

    router.add("POST", "/echo/{name}", echo)
    router.add("GET", "/echo/{name}", echo)
    router.add("GET", "/slow/{seconds}", slow)
    router.add("GET", "/big/{kib}", big)
    return router


@contextlib.asynccontextmanager
async def serving(
    limits: HttpLimits | None = None, calls: list[Request] | None = None, handler: Any = None
) -> AsyncIterator[tuple[HttpServer, int]]:
    server = HttpServer(handler or routes(calls), render_error, limits or HttpLimits())
    port = await server.start("127.0.0.1", 0)
    try:
        yield server, port
    finally:
        await server.shutdown(1)


class Wire:
    """A raw client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received = b""

    @classmethod
    async def open(cls, port: int) -> Wire:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_until(self, marker: bytes, timeout: float = 10) -> bytes:
        while marker not in self.received:
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not chunk:
                raise EOFError(f"closed before {marker!r}; got {self.received[:300]!r}")
            self.received += chunk
        return self.received

    async def read_to_close(self, timeout: float = 10) -> bytes:
        """Everything until the server closes (a reset counts as closed)."""
        while True:
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            except ConnectionResetError:
                return self.received
            if not chunk:
                return self.received
            self.received += chunk

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send ``data`` and read until the server closes the connection."""
    wire = await Wire.open(port)
    try:
        await wire.send(data)
        return await wire.read_to_close(timeout)
    finally:
        await wire.close()
