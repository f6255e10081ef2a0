"""A small, fast HTTP/1.1 server on asyncio protocols and httptools.

Why not aiohttp's server: measured on one core here, aiohttp's web application
answers ~6.4k small POSTs a second and its low-level server ~8.3k, while an
asyncio protocol over httptools answers ~68k (docs/benchmarks.md). The
balancer's cache-hit path must keep up with nginx (~20k), so both servers
use this front (and the balancer's upstream client is built the same way).

What it does:
- keep-alive and pipelining (answers in request order, one handler at a time
  per connection), ``Expect: 100-continue``, chunked request bodies, HEAD,
  absolute-form request targets;
- a handler returns a ``Response`` (answered inside ``data_received``: no task
  at all) or an awaitable of one (run as an owned task);
- every limit in one ``HttpLimits``, enforced while bytes arrive and answered
  once, clearly (the connection module says how);
- a sweeper, once a second, refreshes the Date header and applies the
  timeouts (header, request, keep-alive idle, write, linger);
- graceful shutdown: stop listening, let running handlers finish (bounded),
  then close every connection.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import socket
import ssl
import struct

from common.http_connection import Connection
from common.http_limits import HttpLimits
from common.http_message import (
    ErrorRenderer,
    Handler,
    HeaderBlock,
    HttpError,
    Request,
    Response,
    UnsafeHeader,
    encode_headers,
)

log = logging.getLogger(__name__)

# struct tcp_info: eight one-byte fields, then u32 rto, ato, snd_mss, rcv_mss, unacked
# (offset 24); on a listening socket "unacked" is the accept queue's length (Linux).


def queued_connections(sock: socket.socket) -> int:
    """Connections accepted by the kernel but not yet by this process (Linux; 0 elsewhere)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    except (OSError, AttributeError):
        return 0
    return int(struct.unpack_from("<I", info, 24)[0]) if len(info) >= 28 else 0


__all__ = [
    "ErrorRenderer",
    "Handler",
    "HeaderBlock",
    "HttpError",
    "HttpLimits",
    "HttpServer",
    "Request",
    "Response",
    "UnsafeHeader",
]


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        on_error: ErrorRenderer,
        limits: HttpLimits | None = None,
        server_name: str = "affinity-serve",
    ) -> None:
        self.handler = handler
        self.on_error = on_error
        self.limits = limits or HttpLimits()
        self.server_line = encode_headers({"Server": server_name})
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.buffered_body = 0  # request-body bytes held by every connection together
        self.clock = 0.0  # the loop's time at the last tick: timeouts need no finer grain
        self.preamble = b""  # the Server and Date lines every answer carries
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.Task[None] | None = None
        # The loop it serves on, got once (on Python 3.11 each get_running_loop() is a getpid()).
        self.loop: asyncio.AbstractEventLoop | None = None

    async def start(
        self, host: str, port: int, backlog: int = 2048, reuse_port: bool = False, tls: ssl.SSLContext | None = None
    ) -> int:
        """Listen on host:port (0: any free port); returns the bound port. ``reuse_port``:
        share the port with sibling processes (SO_REUSEPORT; the kernel spreads connections);
        ``tls``: serve HTTPS with this context (the handshake within the header timeout)."""
        loop = self.loop = asyncio.get_running_loop()
        self._tick(loop.time())
        server = await loop.create_server(
            lambda: Connection(self), host, port, backlog=backlog, reuse_address=True, reuse_port=reuse_port or None,
            ssl=tls, ssl_handshake_timeout=self.limits.header_timeout if tls is not None else None,
        )  # fmt: skip
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        return int(server.sockets[0].getsockname()[1])

    def _tick(self, now: float) -> None:
        self.clock = now
        self.preamble = self.server_line + b"Date: %s\r\n" % email.utils.formatdate(usegmt=True).encode()

    async def _sweep(self) -> None:
        """Once a second: refresh the clock and the Date header, apply the timeouts."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            self._tick(now)
            for conn in list(self.connections):
                conn.check_timeouts(now)

    async def shutdown(self, grace: float = 30.0) -> None:
        queued = sum(queued_connections(sock) for server in self._servers for sock in server.sockets)
        for server in self._servers:
            server.close()
        if queued:  # the kernel resets them (unless net.ipv4.tcp_migrate_req hands them to a sibling listener)
            log.warning("listener closed with %d connection(s) still queued in it", queued)
        for conn in list(self.connections):
            conn.close_when_idle()
        # Until every connection has answered what it received and closed (answers
        # start new handler tasks as they go), or the grace runs out.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.connections and loop.time() < deadline:
            if self.tasks:
                await asyncio.wait(list(self.tasks), timeout=min(0.05, max(0.0, deadline - loop.time())))
            else:
                await asyncio.sleep(0.02)
        for task in list(self.tasks):
            task.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for conn in list(self.connections):
            conn.abort()
        for server in self._servers:
            await server.wait_closed()
