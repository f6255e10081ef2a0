"""Clients that never read, over real loopback sockets: the bytes a connection can
make the server hold are bounded, a stalled writer is cut off after the write
timeout, and whatever a connection held is freed when it goes."""

from __future__ import annotations

import asyncio
import socket
import struct
import tracemalloc

from common.http_server import HttpLimits, Request
from tests.http_wire import HOST, Wire, run, serving

PIPELINED = 255 << 10  # of small GETs, each asking for a 4 KiB answer


async def settled(calls: list[Request]) -> int:
    """Wait until the server stops handling requests (a few quiet polls in a row)."""
    seen, quiet = -1, 0
    while quiet < 5:
        await asyncio.sleep(0.1)
        quiet = quiet + 1 if len(calls) == seen else 0
        seen = len(calls)
    return seen


def test_pipelined_requests_never_read_hold_bounded_memory() -> None:
    """255 KiB of pipelined GETs whose 4 KiB answers are never read (~35 MiB of answers):
    the server stops handling and reading once the answers back up, holds a bounded
    amount meanwhile, aborts after the write timeout and then holds nothing."""
    one = b"GET /big/4 HTTP/1.1\r\n" + HOST + b"\r\n"
    payload = one * (PIPELINED // len(one))

    async def main() -> tuple[int, int, int, int, bool, int]:
        calls: list[Request] = []
        async with serving(HttpLimits(write_timeout=3), calls) as (server, port):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads nothing
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock)
            tracemalloc.start()
            try:
                baseline = tracemalloc.get_traced_memory()[0]
                writer.write(payload)  # never drained: the server may stop reading
                handled = await settled(calls)
                calls.clear()  # the test's own record of the requests is not the server's memory
                held = tracemalloc.get_traced_memory()[0] - baseline
                while server.connections:  # still not reading: the write timeout cuts it off
                    await asyncio.sleep(0.05)
                cut_off = await asyncio.wait_for(_closed_by_server(reader), 10)
                writer.transport.abort()  # the client's unsent requests go too
                await asyncio.sleep(0.1)
                after = tracemalloc.get_traced_memory()[0] - baseline
            finally:
                tracemalloc.stop()
            return len(payload) // len(one), handled, held, after, cut_off, server.buffered_body

    sent, handled, held, after, cut_off, buffered = run(main, timeout=60)
    assert handled < sent, "the server stopped making answers nobody reads"
    assert held < 2 << 20, f"{held} bytes held for a client that never reads"
    assert cut_off, "the client sees the connection end"
    assert after < 256 << 10, f"{after} bytes still held after the connection was aborted"
    assert buffered == 0


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Drain the socket until the server's close (EOF or reset) shows up."""
    try:
        while await reader.read(1 << 20):
            pass
    except ConnectionResetError:
        pass
    return True


def test_reading_resumes_once_the_client_catches_up() -> None:
    """Backpressure is a pause, not a failure: a slow reader gets every answer, in order."""
    count = 2000
    requests = b"".join(b"GET /echo/n%d HTTP/1.1\r\n" % i + HOST + b"\r\n" for i in range(count))

    async def main() -> tuple[bytes, int]:
        calls: list[Request] = []
        async with serving(HttpLimits(write_buffer_high=4096, max_pipelined=4), calls) as (_, port):
            wire = await Wire.open(port)
            wire.writer.write(requests)
            await asyncio.sleep(0.3)  # let the answers back up first
            last = b"/echo/n%d" % (count - 1)
            while not wire.received.endswith(last):
                wire.received += await asyncio.wait_for(wire.reader.read(1024), 10)
                await asyncio.sleep(0)
            await wire.close()
            return wire.received, len(calls)

    received, handled = run(main, timeout=60)
    assert handled == count
    names = [line for line in received.split(b"\r\n\r\n") if line.startswith(b"/echo/")]
    assert [n.split(b"HTTP/1.1")[0] for n in names][:3] == [b"/echo/n0", b"/echo/n1", b"/echo/n2"]
    assert received.count(b"HTTP/1.1 200 OK") == count


def test_an_aborted_connection_frees_what_it_held() -> None:
    """A client that resets mid-pipeline, with a handler running, requests queued behind
    it and a body half sent: the server ends up holding nothing for it."""

    async def main() -> tuple[int, int, int]:
        calls: list[Request] = []
        async with serving(calls=calls) as (server, port):
            wire = await Wire.open(port)
            queued = b"POST /echo/q HTTP/1.1\r\n" + HOST + b"Content-Length: 10000\r\n\r\n" + b"q" * 10000
            partial = b"POST /echo/p HTTP/1.1\r\n" + HOST + b"Content-Length: 100000\r\n\r\n" + b"p" * 50000
            await wire.send(b"GET /slow/0.5 HTTP/1.1\r\n" + HOST + b"\r\n" + queued * 3 + partial)
            while server.buffered_body < 80000:
                await asyncio.sleep(0.01)
            during = server.buffered_body
            sock = wire.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            wire.writer.transport.abort()  # a reset, not a half-close
            while server.connections or server.tasks:
                await asyncio.sleep(0.02)
            return during, server.buffered_body, len(calls)

    during, after, handled = run(main)
    assert during == 3 * 10000 + 50000
    assert after == 0
    assert handled == 1, "requests queued behind the running one were dropped with the connection"
