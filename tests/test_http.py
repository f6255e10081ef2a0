"""The HTTP/1.1 server and router over real loopback sockets: the everyday behaviour."""

from __future__ import annotations

import asyncio

import pytest

from common.http_router import Router
from common.http_server import HttpLimits, HttpServer, Request, Response
from common.rest import render_error
from tests.http_wire import routes, run


async def echo_server(limits: HttpLimits | None = None) -> tuple[HttpServer, int]:
    server = HttpServer(routes(), render_error, limits or HttpLimits(max_body=1 << 20))
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
        (b"POST /echo/a HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n", b"413"),
        (b"GET /echo/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
        (b"GET /echo/a HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"b" * 70000 + b"\r\n\r\n", b"431"),
        (b"NOT HTTP AT ALL\r\n\r\n", b"400"),
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
        (b"DELETE /echo/a HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
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
        server, port = await echo_server(HttpLimits(max_body=1000))
        head = b"POST /echo/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"%x\r\n%s\r\n" % (600, b"x" * 600)
        out = await raw_exchange(port, head + chunk + chunk, until=b"}")
        await server.shutdown(1)
        return out

    assert run(main).startswith(b"HTTP/1.1 413")


def test_slow_request_gets_408_and_idle_connection_is_closed() -> None:
    async def main() -> tuple[bytes, bytes]:
        server, port = await echo_server(HttpLimits(request_timeout=1, header_timeout=1, keepalive_timeout=1))
        slow = await raw_exchange(port, b"POST /echo/a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", timeout=5)
        idle = await raw_exchange(port, b"GET /echo/a HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)  # answered, then closed
        await server.shutdown(1)
        return slow, idle

    slow, idle = run(main)
    assert slow.startswith(b"HTTP/1.1 408")
    assert idle.startswith(b"HTTP/1.1 200") and idle.endswith(b"/echo/a")


def test_expect_continue_head_and_connection_close() -> None:
    async def main() -> tuple[bytes, bytes, bytes]:
        server, port = await echo_server()
        cont = await raw_exchange(
            port,
            b"POST /echo/a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
            until=b"\r\n\r\nhi",
        )
        head = await raw_exchange(port, b"HEAD /echo/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        closing = await raw_exchange(port, b"GET /echo/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await server.shutdown(1)
        return cont, head, closing

    cont, head, closing = run(main)
    assert cont.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 7\r\n" in head and head.endswith(b"\r\n\r\n")
    assert b"Connection: close" in closing and closing.endswith(b"/echo/a")


def test_shutdown_lets_running_requests_finish() -> None:
    async def main() -> bytes:
        server, port = await echo_server()
        pending = asyncio.ensure_future(
            raw_exchange(port, b"GET /slow/0.3 HTTP/1.1\r\nHost: x\r\n\r\n", until=b"slow 0.3")
        )
        await asyncio.sleep(0.1)
        await server.shutdown(5)
        return await pending

    assert run(main).endswith(b"slow 0.3")


def test_shutdown_answers_what_each_connection_received_then_closes() -> None:
    """Pipelined requests already read are answered (not dropped); a connection
    accepted just before the shutdown gets its first request answered; an idle
    kept-alive one is closed at once."""

    async def main() -> tuple[bytes, bytes, bytes]:
        server, port = await echo_server()
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        idle_writer.write(b"GET /echo/k HTTP/1.1\r\nHost: x\r\n\r\n")
        await idle_reader.readuntil(b"/echo/k")
        piped = b"GET /slow/0.2 HTTP/1.1\r\nHost: x\r\n\r\n" + b"GET /echo/p2 HTTP/1.1\r\nHost: x\r\n\r\n"
        pipelined = asyncio.ensure_future(raw_exchange(port, piped))
        fresh_reader, fresh_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.1)
        stopping = asyncio.ensure_future(server.shutdown(5))
        await asyncio.sleep(0.05)
        fresh_writer.write(b"GET /echo/late HTTP/1.1\r\nHost: x\r\n\r\n")  # sent after the shutdown began
        fresh = await asyncio.wait_for(fresh_reader.read(), 5)
        idle = await asyncio.wait_for(idle_reader.read(), 5)
        fresh_writer.close()
        idle_writer.close()
        out = await pipelined
        await stopping
        return out, fresh, idle

    pipelined, fresh, idle = run(main)
    assert pipelined.count(b"HTTP/1.1 200 OK") == 2 and pipelined.endswith(b"/echo/p2")
    assert b"Connection: close" in pipelined, "the last answer says the connection closes"
    assert fresh.startswith(b"HTTP/1.1 200 OK") and fresh.endswith(b"/echo/late")
    assert idle == b"", "an idle kept-alive connection is closed without a word"


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
    assert getattr(info.value, "headers", None) == {"Allow": "POST"}, "a 405 says what is allowed (RFC 9110)"
    with pytest.raises(Exception, match="not allowed") as info:
        call("DELETE", "/v2")
    assert getattr(info.value, "headers", None) == {"Allow": "GET, HEAD"}
    with pytest.raises(Exception, match="no such route"):
        call("GET", "/v3")


def test_a_client_that_half_closes_still_gets_its_answers() -> None:
    async def main() -> bytes:
        server, port = await echo_server()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow/0.2 HTTP/1.1\r\nHost: x\r\n\r\nGET /echo/last HTTP/1.1\r\nHost: x\r\n\r\n")
        writer.write_eof()  # done sending, still reading
        received = await asyncio.wait_for(reader.read(), 5)  # to the server's close
        writer.close()
        await server.shutdown(1)
        return received

    out = run(main)
    assert out.count(b"HTTP/1.1 200 OK") == 2
    assert out.endswith(b"/echo/last") and b"Connection: close\r\n" in out
