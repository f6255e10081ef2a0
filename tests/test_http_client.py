"""The balancer's upstream HTTP/1.1 client over real loopback sockets: pooling,
typed failures, the answer size limit, and bytes nobody asked for."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from balancer.errors import UpstreamError
from balancer.http_client import HttpClient
from tests.http_wire import run

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


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_client_refuses_an_answer_over_its_size_limit(framing: str) -> None:
    """Counted as it arrives: a declared length over the limit fails at once, a chunked
    answer once its bytes pass the limit; that socket is never reused."""
    connections = 0
    sent_whole = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        if framing == "content-length":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (64 << 20))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(4096):  # up to 64 MiB, in 16 KiB chunks: more than loopback buffers hold
                writer.write(b"4000\r\n" + b"x" * 0x4000 + b"\r\n")
                await writer.drain()
            sent_whole.append(True)
        except ConnectionError:
            pass

    async def main() -> list[str]:
        server, port = await scripted_server(handle)
        client = HttpClient(try_timeout=10, max_answer=256 << 10)
        kinds = []
        for _ in range(2):
            try:
                await client.send(f"http://127.0.0.1:{port}", "GET", "/big")
            except UpstreamError as exc:
                kinds.append(exc.kind)
        await client.close()
        server.close()
        return kinds

    assert run(main) == ["too_large", "too_large"]
    assert connections == 2, "a refused answer's connection is closed, not pooled"
    assert not sent_whole, "the client stopped reading and closed long before 64 MiB"


@pytest.mark.parametrize("when", ["while idle in the pool", "in the same read as the answer"])
def test_unsolicited_bytes_close_a_pooled_connection(when: str) -> None:
    """Bytes nobody asked for are never read as the next request's answer."""
    connections = 0
    closed_by_client = asyncio.Event()
    forged = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        number = connections
        while True:
            try:
                await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nanswer%d" % number
            if number == 1 and when == "in the same read as the answer":
                writer.write(answer + forged)
            else:
                writer.write(answer)
                if number == 1:
                    await writer.drain()
                    writer.write(forged)
            await writer.drain()
        if number == 1:
            closed_by_client.set()

    async def main() -> list[bytes]:
        server, port = await scripted_server(handle)
        client = HttpClient(try_timeout=5)
        url = f"http://127.0.0.1:{port}"
        first = await client.send(url, "GET", "/")
        await asyncio.wait_for(closed_by_client.wait(), 5)  # the client hung up on the forged bytes
        second = await client.send(url, "GET", "/")
        await client.close()
        server.close()
        return [first.body, second.body]

    assert run(main) == [b"answer1", b"answer2"]
    assert connections == 2


def test_client_skips_an_interim_answer() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal")
        await writer.drain()

    async def main() -> bytes:
        server, port = await scripted_server(handle)
        client = HttpClient(try_timeout=5)
        answer = await client.send(f"http://127.0.0.1:{port}", "POST", "/", b"{}")
        await client.close()
        server.close()
        return answer.body

    assert run(main) == b"final"
