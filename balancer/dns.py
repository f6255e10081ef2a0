"""DNS discovery: ``--workers-dns name:port`` lists every A record of ``name``.

A docker-compose service scaled with ``--scale``, or a Kubernetes headless
service, answers with one A record per worker; the balancer re-resolves on its
discovery interval, so workers join and leave without a restart. With
``--dns-resolver host:port`` the query goes to that server over UDP (dnslib
builds and parses the packets; tests run their own server on loopback);
without it, the system resolver (``getaddrinfo``). A failed or empty answer
returns None: the last known workers stay.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from dnslib import QTYPE, RCODE, DNSError, DNSRecord

log = logging.getLogger(__name__)


def split_host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} {text!r} is not of the form host:port")
    return host, int(port)


class _Reply(asyncio.DatagramProtocol):
    def __init__(self, query_id: int) -> None:
        self.query_id = query_id
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if len(data) >= 2 and int.from_bytes(data[:2], "big") == self.query_id and not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


async def query_a(name: str, server: tuple[str, int], within: float) -> list[str]:
    """The A records of ``name``, asked of ``server`` over UDP."""
    query = DNSRecord.question(name, "A")
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(lambda: _Reply(query.header.id), remote_addr=server)
    try:
        transport.sendto(query.pack())
        async with asyncio.timeout(within):
            data = await protocol.answer
    finally:
        transport.close()
    reply = DNSRecord.parse(data)
    if reply.header.rcode != RCODE.NOERROR:
        raise LookupError(f"DNS answered {RCODE.get(reply.header.rcode)} for {name}")
    return sorted({str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A})


class DnsSource:
    name = "dns"

    def __init__(self, target: str, resolver: str | None = None, timeout: float = 2.0) -> None:
        self.host, self.port = split_host_port(target, "--workers-dns")
        self.resolver = split_host_port(resolver, "--dns-resolver") if resolver else None
        self.timeout = timeout

    async def _resolve(self) -> list[str]:
        if self.resolver is not None:
            return await query_a(self.host, self.resolver, self.timeout)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.timeout):
            infos = await loop.getaddrinfo(self.host, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
        return sorted({str(info[4][0]) for info in infos})

    async def addresses(self) -> tuple[str, ...] | None:
        try:
            found = await self._resolve()
        except (OSError, TimeoutError, LookupError, ValueError, DNSError) as exc:
            log.warning("DNS discovery of %s failed (%s); keeping the last known workers", self.host, exc)
            return None
        return tuple(f"http://{ip}:{self.port}" for ip in found) or None

    async def close(self) -> None:
        return None
