"""The HTTP/1.1 server, router and upstream client, over real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from balancer.errors import UpstreamError
from balancer.http_client import HttpClient
from common.http_router import Router
from common.http_server import HttpServer, Request, Response
from common.rest import render_error


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), 20))


async def echo_server(request_timeout: float = 30.0, max_body: int = 1 << 20) -> tuple[HttpServer, int]:
    router = Router()

    def echo(req: Request) -> Response:
        return Response(200, req.body or req.path.encode(), "text/plain", {"X-Name": req.match.get("name", "")})

    async def slow(req: Request) -> Response:
        await asyncio.sleep(float(req.match["seconds"]))
        return Response(200, b"slow " + req.match["seconds"].encode(), "text/plain")

    router.add("POST", "/echo/{name}", echo)
    router.add("GET", "/echo/{name}", echo)
    router.add("GET", "/slow/{seconds}", slow)
    server = HttpServer(router, render_error, max_body=max_body, request_timeout=request_timeout)
    port = await server.start("127.0.0.1", 0)
    return server, port


async def raw_exchange(port: int, data: bytes, until: bytes | None = None, timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    received = b""
    try:
        while until is None or until not in received:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                break
            received += chunk
    finally:
        writer.close()
        await writer.wait_closed()
    return received


def test_keep_alive_and_pipelined_answers_come_in_order() -> None:
    async def main() -> bytes:
        server, port = await echo_server()
        requests = b"".join(
            b"GET /slow/0.05 HTTP/1.1\r\nHost: x\r\n\r\n"
            if i == 0
            else b"GET /echo/n%d HTTP/1.1\r\nHost: x\r\n\r\n" % i
            for i in range(4)
        )
        out = await raw_exchange(port, requests, until=b"/echo/n3")
        await server.shutdown(1)
        return out

    out = run(main)
    assert out.count(b"HTTP/1.1 200 OK") == 4
    positions = [out.index(marker) for marker in (b"slow 0.05", b"/echo/n1", b"/echo/n2", b"/echo/n3")]
    assert positions == sorted(positions), "answers keep the order of the requests"
    assert b"X-Name: n2" in out


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /echo/a HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n", b"413"),
        (b"GET /echo/" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", b"414"),
        (b"GET /echo/a HTTP/1.1\r\n" + b"X-Big: " + b"b" * 70000 + b"\r\n\r\n", b"431"),
        (b"NOT HTTP AT ALL\r\n\r\n", b"400"),
        (b"GET /nowhere HTTP/1.1\r\n\r\n", b"404"),
        (b"DELETE /echo/a HTTP/1.1\r\n\r\n", b"405"),
    ],
)
def test_refusals_are_clear_json_errors(request_bytes: bytes, status: bytes) -> None:
    async def main() -> bytes:
        server, port = await echo_server()
        out = await raw_exchange(port, request_bytes, until=b"}")
        await server.shutdown(1)
        return out

    out = run(main)
    assert out.startswith(b"HTTP/1.1 " + status)
    assert b'{"error":' in out


def test_chunked_body_over_the_limit_is_413_while_reading() -> None:
    async def main() -> bytes:
        server, port = await echo_server(max_body=1000)
        head = b"POST /echo/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"%x\r\n%s\r\n" % (600, b"x" * 600)
        out = await raw_exchange(port, head + chunk + chunk, until=b"}")
        await server.shutdown(1)
        return out

    assert run(main).startswith(b"HTTP/1.1 413")


def test_slow_request_gets_408_and_idle_connection_is_closed() -> None:
    async def main() -> tuple[bytes, bytes]:
        server, port = await echo_server(request_timeout=1.0)
        server.keepalive_timeout = 1.0
        slow = await raw_exchange(port, b"POST /echo/a HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", timeout=5)
        idle = await raw_exchange(port, b"GET /echo/a HTTP/1.1\r\n\r\n", timeout=5)  # answered, then closed
        await server.shutdown(1)
        return slow, idle

    slow, idle = run(main)
    assert slow.startswith(b"HTTP/1.1 408")
    assert idle.startswith(b"HTTP/1.1 200") and idle.endswith(b"/echo/a")


def test_expect_continue_head_and_connection_close() -> None:
    async def main() -> tuple[bytes, bytes, bytes]:
        server, port = await echo_server()
        cont = await raw_exchange(
            port, b"POST /echo/a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi", until=b"\r\n\r\nhi"
        )
        head = await raw_exchange(port, b"HEAD /echo/a HTTP/1.1\r\nConnection: close\r\n\r\n")
        closing = await raw_exchange(port, b"GET /echo/a HTTP/1.1\r\nConnection: close\r\n\r\n")
        await server.shutdown(1)
        return cont, head, closing

    cont, head, closing = run(main)
    assert cont.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 7\r\n" in head and head.endswith(b"\r\n\r\n")
    assert b"Connection: close" in closing and closing.endswith(b"/echo/a")


def test_shutdown_lets_running_requests_finish() -> None:
    async def main() -> bytes:
        server, port = await echo_server()
        pending = asyncio.ensure_future(raw_exchange(port, b"GET /slow/0.3 HTTP/1.1\r\n\r\n", until=b"slow 0.3"))
        await asyncio.sleep(0.1)
        await server.shutdown(5)
        return await pending

    assert run(main).endswith(b"slow 0.3")


def test_router_prefers_static_segments_and_reports_405() -> None:
    router = Router()
    router.add("GET", "/v2/models/{name}", lambda r: Response(200, b"meta " + r.match["name"].encode()))
    router.add("GET", "/v2/models/{name}/versions/{version}", lambda r: Response(200, r.match["version"].encode()))
    router.add("POST", "/v2/models/{name}/infer", lambda r: Response(200, b"infer"))
    router.add("GET", "/v2", lambda r: Response(200, b"server"))

    def call(method: str, path: str) -> bytes:
        result = router(Request(method, path, "", {}, b""))
        assert isinstance(result, Response)
        return result.body

    assert call("GET", "/v2/models/m1") == b"meta m1"
    assert call("GET", "/v2/models/versions") == b"meta versions", "a model may be called 'versions'"
    assert call("GET", "/v2/models/m1/versions/3") == b"3"
    assert call("POST", "/v2/models/m1/infer") == b"infer"
    assert call("HEAD", "/v2") == b"server"
    with pytest.raises(Exception, match="not allowed") as info:
        call("GET", "/v2/models/m1/infer")
    assert getattr(info.value, "status", None) == 405
    with pytest.raises(Exception, match="no such route"):
        call("GET", "/v3")


# the upstream client


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def scripted_server(script: Script) -> Any:
    """A server that runs ``script`` per connection and always closes the socket after."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    return head + await reader.readexactly(length)


def test_client_reuses_connections_and_reads_chunked_answers() -> None:
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Model-Source: cpu\r\n\r\n")
            writer.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            await writer.drain()

    async def main() -> list[Any]:
        server, port = await scripted_server(handle)
        client = HttpClient(try_timeout=5)
        answers = [
            await client.send(f"http://127.0.0.1:{port}", "POST", "/x", b"{}", "application/json") for _ in range(5)
        ]
        await client.close()
        server.close()
        return answers

    answers = run(main)
    assert [a.body for a in answers] == [b"hello world"] * 5
    assert answers[0].headers == {"X-Model-Source": "cpu"}
    assert connections == 1


def test_client_retries_a_stale_keep_alive_socket_once() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()  # then the socket is closed behind the client's back

    async def main() -> list[bytes]:
        server, port = await scripted_server(handle)
        client = HttpClient(try_timeout=5)
        out = []
        for _ in range(3):
            out.append((await client.send(f"http://127.0.0.1:{port}", "GET", "/")).body)
            await asyncio.sleep(0.05)
        await client.close()
        server.close()
        return out

    assert run(main) == [b"ok", b"ok", b"ok"]


def test_client_failures_are_typed() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()

    async def main() -> list[str]:
        kinds = []
        client = HttpClient(try_timeout=0.3, connect_timeout=0.5)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        for port in [closed_port]:
            try:
                await client.send(f"http://127.0.0.1:{port}", "GET", "/")
            except UpstreamError as exc:
                kinds.append(exc.kind)
        for script in (silent, half):
            server, port = await scripted_server(script)
            try:
                await client.send(f"http://127.0.0.1:{port}", "GET", "/")
            except UpstreamError as exc:
                kinds.append(exc.kind)
            server.close()
        await client.close()
        return kinds

    assert run(main) == ["connect", "timeout", "reset"]
