"""Discovery at run time: a DNS name the test answers for, and workers registering
in a real Redis. Workers join and leave without a restart; when the registry is
gone, the last known workers stay."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dnslib import QTYPE, RR, A
from dnslib.server import BaseResolver, DNSServer

from balancer.discovery import Discovery, StaticSource
from balancer.dns import DnsSource, query_a
from common.process import free_port
from common.registration import Registration
from tests.fake_worker import FakeWorker
from tests.harness import RedisServer, Server, request, start_balancer, start_worker, wait_until
from tests.reference import infer_body, sample_inputs

NAME = "workers.affinity.test."


class Records(BaseResolver):  # type: ignore[misc]
    """Answers A records for NAME from a list the test changes."""

    def __init__(self) -> None:
        self.addresses: list[str] = []

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        if str(request.q.qname) == NAME and request.q.qtype == QTYPE.A:
            for ip in self.addresses:
                reply.add_answer(RR(NAME, QTYPE.A, rdata=A(ip), ttl=1))
        return reply


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dns() -> Iterator[tuple[Records, DNSServer]]:
    records = Records()
    server = DNSServer(records, port=free_udp_port(), address="127.0.0.1")
    server.start_thread()
    try:
        yield records, server
    finally:
        if server.isAlive():
            server.stop()
        server.server.server_close()


def ring(balancer: Server) -> list[str]:
    return sorted(request(balancer.url, "GET", "/admin/cluster").json()["ring"]["workers"])


def served_by(balancer: Server, zoo: Path, seed: int) -> str:
    body = infer_body(sample_inputs(zoo, "mlp-00", 1, seed))
    resp = request(balancer.url, "POST", "/v2/models/mlp-00/infer", body, {"Cache-Control": "no-cache"})
    assert resp.status == 200, resp.body
    return resp.headers["x-served-by"]


def test_dns_query_and_a_dead_resolver(dns: tuple[Records, DNSServer]) -> None:
    records, server = dns
    records.addresses = ["127.0.0.3", "127.0.0.2"]
    assert asyncio.run(query_a(NAME, ("127.0.0.1", server.server.server_address[1]), 2)) == ["127.0.0.2", "127.0.0.3"]
    source = DnsSource(f"{NAME}:9000", f"127.0.0.1:{server.server.server_address[1]}", timeout=0.3)
    assert asyncio.run(source.addresses()) == ("http://127.0.0.2:9000", "http://127.0.0.3:9000")
    records.addresses = []
    assert asyncio.run(source.addresses()) is None, "nobody listed: keep the last known"
    dead = DnsSource(f"{NAME}:9000", f"127.0.0.1:{free_udp_port()}", timeout=0.3)
    assert asyncio.run(dead.addresses()) is None
    with pytest.raises(ValueError, match="host:port"):
        DnsSource("no-port")


def test_discovery_keeps_the_last_known_workers_when_its_source_fails() -> None:
    class Flaky(StaticSource):
        def __init__(self) -> None:
            super().__init__(())
            self.answer: tuple[str, ...] | None = None

        async def addresses(self) -> tuple[str, ...] | None:
            return self.answer

    fakes = [FakeWorker(f"fw-{i}").start() for i in range(2)]
    try:
        from balancer.http_client import HttpClient

        async def run() -> list[list[str]]:
            client = HttpClient()
            source = Flaky()
            discovery = Discovery(source, client)
            seen = []
            for answer in ((fakes[0].url, fakes[1].url), None, (fakes[1].url,), ()):
                source.answer = answer
                found = await discovery.members()
                seen.append(sorted(found))
            await client.close()
            return seen

        assert asyncio.run(run()) == [["fw-0", "fw-1"], ["fw-0", "fw-1"], ["fw-1"], ["fw-1"]]
    finally:
        for f in fakes:
            f.stop()


def test_dns_discovery_adds_and_removes_workers(dns: tuple[Records, DNSServer], zoo: Path, logdir: Path) -> None:
    records, server = dns
    port = free_port()
    workers = [start_worker(zoo, logdir, port=port, host=host) for host in ("127.0.0.2", "127.0.0.3")]
    balancer = None
    try:
        for w in workers:
            w.wait_ready()
        first, second = (f"127.0.0.{i}:{port}" for i in (2, 3))
        records.addresses = ["127.0.0.2"]
        resolver = f"127.0.0.1:{server.server.server_address[1]}"
        balancer = start_balancer(
            [], logdir, "--workers-dns", f"{NAME}:{port}", "--dns-resolver", resolver, "--discovery-interval", "0.3"
        ).wait_ready()
        assert ring(balancer) == [first]
        assert served_by(balancer, zoo, 1) == first

        records.addresses = ["127.0.0.2", "127.0.0.3"]
        wait_until(lambda: ring(balancer) == [first, second])
        records.addresses = ["127.0.0.3"]
        wait_until(lambda: ring(balancer) == [second])
        assert {served_by(balancer, zoo, seed) for seed in range(2, 6)} == {second}

        server.stop()  # the resolver is gone: the last known workers stay
        server.server.server_close()
        wait_until(lambda: "keeping the last known workers" in balancer.proc.log_tail(5))
        assert ring(balancer) == [second]
        assert served_by(balancer, zoo, 6) == second
    finally:
        if balancer is not None:
            balancer.proc.stop()
        for w in workers:
            w.proc.stop()


def test_redis_discovery_adds_and_removes_workers(zoo: Path, logdir: Path, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path).start()
    started: list[Server] = []
    balancer = None

    def worker(name: str) -> Server:
        w = start_worker(zoo, logdir, "--worker-id", name, "--register-redis", redis.url, "--register-ttl", "1.5")
        started.append(w)
        return w.wait_ready()

    try:
        worker("rw-1")
        wait_until(lambda: redis.client().exists("affinity:workers:rw-1"))
        raw = redis.client().get("affinity:workers:rw-1")
        assert Registration.from_json(raw) == Registration("rw-1", started[0].url)
        args = ("--workers-redis", redis.url, "--discovery-interval", "0.3")
        balancer = start_balancer([], logdir, *args).wait_ready()
        assert ring(balancer) == ["rw-1"]

        worker("rw-2")
        wait_until(lambda: ring(balancer) == ["rw-1", "rw-2"])
        started[0].proc.stop()  # SIGTERM: it leaves the registry at once
        wait_until(lambda: ring(balancer) == ["rw-2"])
        assert served_by(balancer, zoo, 10) == "rw-2"

        third = worker("rw-3")
        wait_until(lambda: ring(balancer) == ["rw-2", "rw-3"])
        third.proc.kill(signal.SIGKILL)  # it never says goodbye: its key expires
        wait_until(lambda: ring(balancer) == ["rw-2"], timeout=15)

        redis.stop()  # the registry is gone: the last known workers stay
        wait_until(lambda: "keeping the last known workers" in balancer.proc.log_tail(5))
        assert ring(balancer) == ["rw-2"]
        assert served_by(balancer, zoo, 11) == "rw-2"
    finally:
        if balancer is not None:
            balancer.proc.stop()
        for w in started:
            w.proc.stop()
        redis.stop()
