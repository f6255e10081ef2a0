"""HTTP/1.1 conformance over real loopback sockets: exactly one answer per request
(Upgrade, CONNECT), request targets and Host (RFC 9112), 405 with Allow and
100 Continue (RFC 9110), and response header lines that cannot be injected."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from cache.entry import CachedAnswer
from cache.response_cache import ResponseCache
from common.http_server import HeaderBlock, Request, Response, UnsafeHeader
from tests.http_wire import HOST, Wire, exchange, final_statuses, run, serving, statuses

CLOSE = b"Connection: close\r\n"


def _exchange_all(cases: list[bytes], calls: list[Request] | None = None) -> list[bytes]:
    async def main() -> list[bytes]:
        async with serving(calls=calls) as (_, port):
            return [await exchange(port, data) for data in cases]

    return list(run(main))


def test_upgrade_is_ignored_and_each_request_gets_exactly_one_answer() -> None:
    """An Upgrade without a body is answered as plain HTTP/1.1 (RFC 9110 allows ignoring
    it) and the connection goes on; one with a body, or CONNECT, gets one refusal."""
    upgrade = b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
    websocket = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    calls: list[Request] = []
    h2c, ws, with_body, connect = _exchange_all(
        [
            b"GET /echo/up HTTP/1.1\r\n" + HOST + upgrade + b"\r\nGET /echo/next HTTP/1.1\r\n" + HOST + CLOSE + b"\r\n",
            b"GET /echo/ws HTTP/1.1\r\n" + HOST + websocket + CLOSE + b"\r\n",
            b"POST /echo/up HTTP/1.1\r\n" + HOST + upgrade + b"Content-Length: 27\r\n\r\n"
            b"GET /echo/smuggled HTTP/1.1\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        ],
        calls,
    )
    assert final_statuses(h2c) == [200, 200] and h2c.endswith(b"/echo/next")
    assert b" 101 " not in h2c
    assert final_statuses(ws) == [200]
    assert final_statuses(with_body) == [400]
    assert final_statuses(connect) == [501]
    assert [c.path for c in calls] == ["/echo/up", "/echo/next", "/echo/ws"], "nothing else reached a handler"


def test_absolute_form_targets_are_served_as_their_path() -> None:
    out = _exchange_all(
        [
            b"GET http://t/echo/abs?x=1 HTTP/1.1\r\n" + HOST + CLOSE + b"\r\n",
            b"GET HTTP://T:80/echo/upper HTTP/1.1\r\n" + HOST + CLOSE + b"\r\n",
            b"GET http://t HTTP/1.1\r\n" + HOST + CLOSE + b"\r\n",
        ]
    )
    assert final_statuses(out[0]) == [200] and out[0].endswith(b"/echo/abs")
    assert out[1].endswith(b"/echo/upper")
    assert final_statuses(out[2]) == [404], "http://t means the path /"


def test_an_http11_request_needs_exactly_one_host() -> None:
    out = _exchange_all(
        [
            b"GET /echo/a HTTP/1.1\r\n" + CLOSE + b"\r\n",
            b"GET /echo/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n" + CLOSE + b"\r\n",
            b"GET /echo/a HTTP/1.1\r\nHost: a\r\nX: y\r\nhost: a\r\n" + CLOSE + b"\r\n",
            b"GET /echo/a HTTP/1.0\r\n\r\n",
            b"GET /echo/a HTTP/1.1\r\nHost:\r\n" + CLOSE + b"\r\n",
        ]
    )
    assert [final_statuses(o) for o in out] == [[400], [400], [400], [200], [200]]
    assert b"Host" in out[0]


def test_a_405_says_which_methods_are_allowed() -> None:
    (out,) = _exchange_all([b"DELETE /echo/a HTTP/1.1\r\n" + HOST + CLOSE + b"\r\n"])
    assert final_statuses(out) == [405]
    assert b"\r\nAllow: GET, HEAD, POST\r\n" in out


def test_100_continue_waits_for_earlier_pipelined_answers() -> None:
    async def main() -> tuple[bytes, bytes]:
        async with serving() as (_, port):
            wire = await Wire.open(port)
            await wire.send(
                b"GET /slow/0.3 HTTP/1.1\r\n" + HOST + b"\r\n"
                b"POST /echo/a HTTP/1.1\r\n" + HOST + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n"
            )
            at_continue = await wire.read_until(b"100 Continue\r\n\r\n")
            await wire.send(b"hi")
            whole = await wire.read_until(b"\r\n\r\nhi")
            await wire.close()
            return at_continue, whole

    at_continue, whole = run(main)
    assert at_continue.index(b"slow 0.3") < at_continue.index(b"100 Continue"), "never ahead of an earlier answer"
    assert statuses(whole) == [200, 100, 200]


def test_no_100_continue_for_http10_and_no_chunked_http10() -> None:
    async def main() -> tuple[bytes, bytes]:
        async with serving() as (_, port):
            wire = await Wire.open(port)
            await wire.send(b"POST /echo/a HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            with pytest.raises(TimeoutError):
                await wire.read_until(b"HTTP/1.1", timeout=0.5)  # nothing comes before the body
            await wire.send(b"hi")
            http10 = await wire.read_to_close()
            await wire.close()
            chunked = await exchange(
                port, b"POST /echo/a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
            )
            return http10, chunked

    http10, chunked = run(main)
    assert statuses(http10) == [200] and http10.endswith(b"hi")
    assert final_statuses(chunked) == [400]


@pytest.mark.parametrize(
    "answer",
    [
        Response(200, b"x", "text/plain", {"X-Evil": "a\r\nSet-Cookie: stolen=1"}),
        Response(200, b"x", "text/plain", {"X-Evil\r\nSet-Cookie": "stolen=1"}),
        Response(200, b"x", "text/plain\r\nSet-Cookie: stolen=1"),
        Response(200, b"x", "text/plain", {"X-Evil": "a\nSet-Cookie: stolen=1"}),
        Response(200, b"x", "text/plain", {"X-Evil": "a\rSet-Cookie: stolen=1"}),
        Response(200, b"x", "text/plain", {"X-Evil": "nul\0"}),
    ],
    ids=["CRLF in value", "CRLF in name", "CRLF in content type", "bare LF", "bare CR", "NUL"],
)
def test_response_headers_cannot_inject_lines(answer: Response) -> None:
    def handler(request: Request) -> Response:
        return answer

    async def main() -> bytes:
        async with serving(handler=handler) as (_, port):
            return await exchange(port, b"GET / HTTP/1.1\r\n" + HOST + CLOSE + b"\r\n")

    out = run(main)
    assert final_statuses(out) == [500]
    assert b"stolen" not in out and b"\0" not in out


def test_a_header_block_is_checked_when_built() -> None:
    assert HeaderBlock({"X-Cache": "hit", "X-Served-By": "w1"}).raw == b"X-Cache: hit\r\nX-Served-By: w1\r\n"
    for bad in ({"X": "a\r\nB: c"}, {"X\n": "a"}, {"X": "\0"}, {"X": "\u2028"}):
        with pytest.raises(UnsafeHeader):
            HeaderBlock(bad)


def test_a_cached_answer_from_a_shared_redis_cannot_inject_headers() -> None:
    """An entry whose fields would break a header line is dropped as unreadable (a miss)."""
    evil = orjson.dumps(["w1\r\nSet-Cookie: stolen=1", "application/json"]) + b"\n{}"
    good = CachedAnswer(b"{}", "w1").to_bytes()

    class SharedStore:
        def __init__(self, entries: dict[str, bytes]) -> None:
            self.entries = entries

        async def get(self, key: str) -> bytes | None:
            return self.entries.get(key)

        async def close(self) -> None:
            pass

    async def main() -> list[Any]:
        cache = ResponseCache(1 << 20, remote=SharedStore({"evil": evil, "good": good}))  # type: ignore[arg-type]
        return [await cache.get_remote("evil"), await cache.get_remote("good"), cache.get_local("evil")]

    evil_hit, good_hit, local = asyncio.run(main())
    assert evil_hit is None and local is None
    assert good_hit is not None and good_hit.hit_headers.raw.endswith(b"X-Served-By: w1\r\n")
