"""The server's limits hold while bytes arrive, over real loopback sockets: sizes
(URL, header line, header fields, trailers, chunk extensions, bodies per request
and per process), open connections, and the clocks (header, idle)."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest

from common.http_server import HttpLimits, Request
from tests.http_wire import HOST, Wire, exchange, final_statuses, run, serving

STREAMED = 4 << 20  # 4 MiB, sent in 16 KiB writes


def _head(extra: bytes) -> bytes:
    return b"POST /echo/a HTTP/1.1\r\n" + HOST + extra


STREAMED_CASES = {
    # case: (bytes before the flood, the flood's byte, bytes after it, status)
    "URL": (b"GET /echo/", b"u", b" HTTP/1.1\r\n" + HOST + b"\r\n", 414),
    "header line": (b"GET /echo/a HTTP/1.1\r\n" + HOST + b"X-Big: ", b"b", b"\r\n\r\n", 431),
    "header name": (b"GET /echo/a HTTP/1.1\r\n" + HOST + b"X-", b"n", b": v\r\n\r\n", 431),
    "trailer line": (_head(b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nX-T: "), b"t", b"\r\n\r\n", 431),
    "chunk extension": (_head(b"Transfer-Encoding: chunked\r\n\r\n1;ext="), b"e", b"\r\nx\r\n0\r\n\r\n", 431),
}


@pytest.mark.parametrize("case", list(STREAMED_CASES))
def test_a_field_over_its_limit_is_refused_without_being_buffered(case: str) -> None:
    """4 MiB of one field, streamed: one refusal, and the server never holds more than a
    small part of it (httptools would otherwise copy the growing line on every read)."""
    before, flood, after, status = STREAMED_CASES[case]

    async def main() -> tuple[bytes, int, list[Request]]:
        calls: list[Request] = []
        async with serving(HttpLimits(linger_timeout=10), calls) as (_, port):
            wire = await Wire.open(port)
            piece = flood * (16 << 10)
            tracemalloc.start()
            try:
                await wire.send(before)
                for _ in range(STREAMED // len(piece)):
                    await wire.send(piece)
                await wire.send(after)
                received = await wire.read_to_close()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
                await wire.close()
        return received, peak, calls

    received, peak, calls = run(main)
    assert final_statuses(received) == [status], received[:200]
    assert b'{"error":' in received
    assert not calls, "the request never reached a handler"
    assert peak < 3 << 19, f"the server held {peak} bytes while refusing a 4 MiB field"


def test_header_fields_and_lines_are_capped_at_their_limits() -> None:
    limits = HttpLimits(max_header_fields=10, max_header_line=1024, max_header_bytes=4096)

    def get(*fields: bytes) -> bytes:
        return b"GET /echo/a HTTP/1.1\r\n" + HOST + b"".join(f + b"\r\n" for f in fields) + b"Connection: close\r\n\r\n"

    async def main() -> list[list[int]]:
        async with serving(limits) as (_, port):
            cases = [
                get(*[b"X-%d: v" % i for i in range(8)]),  # 10 fields with Host and Connection
                get(*[b"X-%d: v" % i for i in range(9)]),  # 11
                get(b"X-A: " + b"a" * (1024 - 3)),  # a line of exactly 1024 (name + value)
                get(b"X-A: " + b"a" * (1024 - 2)),
                get(*[b"X-%d: " % i + b"a" * 1000 for i in range(5)]),  # 5000 bytes of fields
                get(*[b"X-A: a"] * 9),  # repeated names count as separate fields
            ]
            return [final_statuses(await exchange(port, data)) for data in cases]

    assert run(main) == [[200], [431], [200], [431], [431], [431]]


def test_trailers_count_toward_the_limits_and_never_become_headers() -> None:
    def chunked(trailers: bytes) -> bytes:
        return _head(b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\n" + trailers + b"\r\n")

    async def main() -> tuple[list[list[int]], list[Request]]:
        calls: list[Request] = []
        async with serving(HttpLimits(max_header_fields=10), calls) as (_, port):
            out = [
                final_statuses(await exchange(port, chunked(b"Host: evil\r\nX-Trailer: 1\r\nCookie: c\r\n"))),
                final_statuses(await exchange(port, chunked(b"".join(b"X-%d: v\r\n" % i for i in range(9))))),
            ]
        return out, calls

    out, calls = run(main)
    assert out == [[200], [431]]
    assert calls[0].body == b"hi"
    assert calls[0].headers["host"] == "t", "a trailer never replaces or joins a header"
    assert "x-trailer" not in calls[0].headers and "cookie" not in calls[0].headers


def test_bodies_are_capped_per_process_as_well_as_per_request() -> None:
    """Past the process-wide cap a request gets 503 with Retry-After, whether its length
    is declared or chunked; the bytes held are released when answered or aborted."""
    limits = HttpLimits(max_body=1 << 20, max_buffered_body=(1 << 20) + (256 << 10))
    held = 900 << 10

    async def main() -> tuple[bytes, bytes, bytes, int, int]:
        async with serving(limits) as (server, port):
            slow = await Wire.open(port)
            await slow.send(_head(b"Content-Length: %d\r\n\r\n" % (1 << 20)) + b"a" * held)
            while server.buffered_body < held:
                await asyncio.sleep(0.01)
            declared = await exchange(port, _head(b"Content-Length: 600000\r\n\r\n"))
            chunk = b"%x\r\n%s\r\n" % (200 << 10, b"c" * (200 << 10))
            chunked = await exchange(port, _head(b"Transfer-Encoding: chunked\r\n\r\n") + chunk * 3 + b"0\r\n\r\n")
            await slow.send(b"a" * ((1 << 20) - held))
            answered = await slow.read_until(b"a" * 1000)
            after_answer = server.buffered_body
            aborted = await Wire.open(port)
            await aborted.send(_head(b"Content-Length: %d\r\n\r\n" % (1 << 20)) + b"a" * held)
            while server.buffered_body < held:
                await asyncio.sleep(0.01)
            aborted.writer.transport.abort()
            while len(server.connections) > 1:  # only the first client's is left
                await asyncio.sleep(0.01)
            await slow.close()
            return declared, chunked, answered, after_answer, server.buffered_body

    declared, chunked, answered, after_answer, after_abort = run(main)
    for refused in (declared, chunked):
        assert final_statuses(refused) == [503]
        assert b"Retry-After: 1\r\n" in refused
    assert final_statuses(answered) == [200]
    assert after_answer == 0, "an answered request's body is released"
    assert after_abort == 0, "an aborted request's body is released"


def test_open_connections_are_capped() -> None:
    async def main() -> tuple[bytes, list[int]]:
        async with serving(HttpLimits(max_connections=2)) as (server, port):
            first, second = await Wire.open(port), await Wire.open(port)
            while len(server.connections) < 2:
                await asyncio.sleep(0.01)
            extra = await Wire.open(port)
            refused = await extra.read_to_close()
            await extra.close()
            await first.close()
            while len(server.connections) > 1:
                await asyncio.sleep(0.01)
            ok = await exchange(port, b"GET /echo/a HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n")
            await second.close()
            return refused, final_statuses(ok)

    refused, ok = run(main)
    assert final_statuses(refused) == [503]
    assert b"Retry-After: 1\r\n" in refused and b"Connection: close\r\n" in refused
    assert ok == [200], "a slot freed by a closed connection is usable again"


async def trickle(wire: Wire, pieces: list[bytes], interval: float) -> tuple[bytes, int]:
    """Send ``pieces`` one at a time until the server closes the connection; returns
    what came back and how many pieces were sent."""
    reading = asyncio.ensure_future(wire.read_to_close(timeout=60))
    sent = 0
    try:
        for piece in pieces:
            if reading.done():
                break
            await wire.send(piece)
            sent += 1
            await asyncio.sleep(interval)
    except ConnectionError:
        pass
    return await reading, sent


def test_bare_crlfs_do_not_keep_a_connection_alive() -> None:
    """Line breaks between requests are skipped by the parser but are not a request:
    the idle clock keeps running, before the first request and after an answer."""

    async def main() -> list[tuple[bytes, int]]:
        limits = HttpLimits(header_timeout=1, keepalive_timeout=1.5)
        async with serving(limits) as (_, port):
            out = []
            for first in (b"", b"GET /echo/a HTTP/1.1\r\n" + HOST + b"\r\n"):
                wire = await Wire.open(port)
                await wire.send(first)
                out.append(await trickle(wire, [b"\r\n"] * 100, 0.2))  # 20 s unless closed
                await wire.close()
            return out

    (before_any, sent_before), (after_answer, sent_after) = run(main)
    assert before_any == b"", "nothing was asked, nothing is answered"
    assert final_statuses(after_answer) == [200]
    assert sent_before < 100 and sent_after < 100, "the server closed the connection"


def test_a_request_trickled_in_gets_408_after_the_header_timeout() -> None:
    async def main() -> tuple[bytes, int]:
        async with serving(HttpLimits(header_timeout=1, request_timeout=30)) as (_, port):
            wire = await Wire.open(port)
            request = b"GET /echo/a HTTP/1.1\r\n" + HOST + b"X-Slow: " + b"s" * 200 + b"\r\n\r\n"
            out = await trickle(wire, [bytes([b]) for b in request], 0.05)  # 12 s unless refused
            await wire.close()
            return out

    received, sent = run(main)
    assert final_statuses(received) == [408]
    assert sent < 200
