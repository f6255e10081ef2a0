"""The seam where the balancer talks to workers.

``Transport.send`` makes one HTTP exchange with one worker and returns the
status, the headers the balancer passes on, and the body; a failure before any
response byte (connect error, reset, timeout) raises ``UpstreamError`` so the
router can try the next candidate. ``AiohttpTransport`` is the real one: one
``ClientSession`` per process over a sized keep-alive connector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import aiohttp

from balancer.errors import UpstreamError

# Worker response headers the balancer passes on to the client.
PASSED_HEADERS = ("Content-Type", "X-Model-Source", "Retry-After", "Inference-Header-Content-Length")


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    body: bytes
    headers: dict[str, str]


class Transport(Protocol):
    async def send(
        self, base_url: str, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> UpstreamResponse: ...

    async def close(self) -> None: ...


class AiohttpTransport:
    """The session is opened on first use, inside the running loop, so a process
    that fails before sending anything leaves no session behind."""

    def __init__(self, connections: int = 512, connect_timeout: float = 1.0, try_timeout: float = 60.0) -> None:
        self._connections = connections
        self._timeout = aiohttp.ClientTimeout(total=try_timeout, sock_connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._connections, limit_per_host=self._connections, keepalive_timeout=30
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self._session

    async def send(
        self, base_url: str, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> UpstreamResponse:
        headers = {"Content-Type": content_type} if content_type else None
        session = self._session or self._open()
        try:
            async with session.request(method, base_url + path, data=body, headers=headers) as resp:
                payload = await resp.read()
                passed = {h: v for h in PASSED_HEADERS if (v := resp.headers.get(h)) is not None}
                return UpstreamResponse(resp.status, payload, passed)
        except TimeoutError:
            raise UpstreamError("timeout") from None
        except aiohttp.ClientConnectorError:
            raise UpstreamError("connect") from None
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError):
            raise UpstreamError("reset") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
