"""Real processes on loopback for tests: workers, balancers, a private Redis.

Every process is started with explicit flags on a free port (the same
``common.process`` helpers ``affinity up`` uses), logs to a file under the
test's temp dir (shown when it fails to start), and is stopped by the fixture
that started it, SIGTERM then SIGKILL, whatever the test's outcome.

Redis: a real ``redis-server`` on a free port wherever the binary exists;
otherwise fakeredis's TCP server in a process of its own (so a fresh machine
without Redis still runs every test; the session header says which).
"""

from __future__ import annotations

import contextlib
import http.client
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from common.process import affinity_command, free_port, spawn

START_TIMEOUT = 60.0
REDIS_BINARY = shutil.which("redis-server")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def request(
    base: str, method: str, path: str, body: bytes | dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> Response:
    """One HTTP exchange, returning the exact body bytes."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        payload = orjson.dumps(body) if isinstance(body, dict) else body
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=payload, headers=hdrs)
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def wait_until(check: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy (bounded); raise otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


@dataclass
class Proc:
    name: str
    args: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    env: dict[str, str] | None = None  # variables added to the clean environment (PYTHONPATH, ...)
    terminated: bool = False  # SIGTERM sent: a second one would cut the drain short

    def start(self) -> Proc:
        self.terminated = False
        with self.log.open("ab") as log:
            self.popen = spawn(self.args, output=log, extra_env=self.env)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.signal_stop()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def signal_stop(self) -> None:
        """SIGTERM without waiting: ``stop_all`` lets several drain at once."""
        if self.popen is not None and self.popen.poll() is None and not self.terminated:
            self.terminated = True
            self.popen.send_signal(signal.SIGTERM)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)
            if sig == signal.SIGKILL:
                self.popen.wait()


affinity = affinity_command


@dataclass
class Server:
    proc: Proc
    url: str
    grpc: str | None = None  # host:port of its gRPC listener

    @property
    def id(self) -> str:
        return self.url.removeprefix("http://")

    @property
    def port(self) -> int:
        return int(self.url.rpartition(":")[2])

    def wait_ready(self, timeout: float = START_TIMEOUT) -> Server:
        def ready() -> bool:
            if not self.proc.alive():
                raise RuntimeError(f"{self.proc.name} exited early:\n{self.proc.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                return request(self.url, "GET", "/v2/health/ready").status == 200
            return False

        try:
            wait_until(ready, timeout, 0.1)
        except TimeoutError:
            raise RuntimeError(f"{self.proc.name} not ready in {timeout}s:\n{self.proc.log_tail()}") from None
        return self


def start_worker(
    models: Path | None,
    logdir: Path,
    *extra: str,
    port: int = 0,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
) -> Server:
    """A worker on ``host`` and free ports (or ``port``: to restart one where it was); ``models``
    None: no local repository, a remote store in ``extra``; ``env``: variables for its
    environment, e.g. a PYTHONPATH where allowed model code lives."""
    port, grpc_port = port or free_port(), free_port()
    local = ("--models", str(models)) if models is not None else ()
    args = affinity("worker", *local, "--host", host, "--port", str(port), "--grpc-port", str(grpc_port))
    args += ["--threads", "1", *extra]
    proc = Proc(f"worker-{host}-{port}", args, logdir / f"worker-{host}-{port}.log", env=env).start()
    return Server(proc, f"http://{host}:{port}", f"{host}:{grpc_port}")


def start_balancer(workers: list[Server], logdir: Path, *extra: str, env: dict[str, str] | None = None) -> Server:
    """A balancer over these workers (none: give a discovery flag in ``extra``)."""
    port, grpc_port = free_port(), free_port()
    urls = ("--workers", ",".join(w.url for w in workers)) if workers else ()
    args = affinity("balancer", *urls, "--port", str(port), "--grpc-port", str(grpc_port))
    args += ["--index-refresh", "2", *extra]
    proc = Proc(f"balancer-{port}", args, logdir / f"balancer-{port}.log", env=env).start()
    return Server(proc, f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}")


def home(balancer: Server, model: str) -> str:
    """The worker a balancer has placed ``model`` on (its ``/admin/cluster``): the one
    it goes to while healthy, the ring's first candidate only when placement agrees."""
    return str(request(balancer.url, "GET", "/admin/cluster").json()["models"][model]["home"])


@dataclass
class RedisServer:
    logdir: Path
    port: int = field(default_factory=free_port)
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def kind() -> str:
        if REDIS_BINARY is not None:
            return f"redis-server ({REDIS_BINARY})"
        return "fakeredis TCP server (redis-server not found on PATH)"

    def start(self) -> RedisServer:
        if REDIS_BINARY is not None:
            args = [REDIS_BINARY, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            args += ["--dir", str(self.logdir)]
        else:
            serve = (
                "import sys; from fakeredis import TcpFakeServer; "
                "TcpFakeServer(('127.0.0.1', int(sys.argv[1]))).serve_forever()"
            )
            args = [sys.executable, "-c", serve, str(self.port)]
        self.proc = Proc(f"redis-{self.port}", args, self.logdir / f"redis-{self.port}.log").start()
        wait_until(self.ping, START_TIMEOUT, 0.05)
        return self

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def ping(self) -> bool:
        import redis

        try:
            with self.client() as c:
                return bool(c.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def stop_all(procs: Iterable[Proc]) -> None:
    """Stop several processes, their drains overlapping (a front first in ``procs``
    still gets its signal first); each is killed if it outlives ``Proc.stop``'s bound."""
    procs = list(procs)
    for proc in procs:
        proc.signal_stop()
    for proc in procs:
        proc.stop()


@contextlib.contextmanager
def private_cluster(
    models: Path,
    logdir: Path,
    workers: int = 2,
    *balancer_args: str,
    worker_args: tuple[str, ...] = (),
    worker_env: dict[str, str] | None = None,
) -> Iterator[tuple[list[Server], Server]]:
    """Workers and a balancer of the test's own (for tests that kill or stop them)."""
    started = [start_worker(models, logdir, *worker_args, env=worker_env) for _ in range(workers)]
    balancer: Server | None = None
    try:
        for w in started:
            w.wait_ready()
        balancer = start_balancer(started, logdir, *balancer_args).wait_ready()
        yield started, balancer
    finally:
        stop_all([*([balancer.proc] if balancer is not None else []), *(w.proc for w in started)])


@dataclass
class RedisCluster:
    """A three-node Redis Cluster on loopback ports (real redis-server only)."""

    logdir: Path
    nodes: list[RedisServer] = field(default_factory=list)

    @staticmethod
    def available() -> bool:
        return REDIS_BINARY is not None and shutil.which("redis-cli") is not None

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    @staticmethod
    def _port() -> int:
        """A free port whose cluster bus port (+10000) is free and valid too."""
        while True:
            port = free_port()
            if port <= 55535:
                with contextlib.suppress(OSError), socket.socket() as s:
                    s.bind(("127.0.0.1", port + 10000))
                    return port

    def start(self) -> RedisCluster:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> RedisCluster:
        assert REDIS_BINARY is not None
        for _ in range(3):
            node = RedisServer(self.logdir, port=self._port())
            args = [REDIS_BINARY, "--port", str(node.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{node.port}.conf"]
            args += ["--dir", str(self.logdir)]
            node.proc = Proc(f"redis-{node.port}", args, self.logdir / f"redis-{node.port}.log").start()
            self.nodes.append(node)
        for node in self.nodes:
            wait_until(node.ping, START_TIMEOUT, 0.05)
        create = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes)]
        subprocess.run(
            [*create, "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60
        )

        def settled() -> bool:
            with self.nodes[0].client() as c:
                return bool(c.cluster("info")["cluster_state"] == "ok")

        wait_until(settled, START_TIMEOUT, 0.1)
        return self

    @staticmethod
    def keys_on(node: RedisServer, pattern: str) -> list[bytes]:
        with node.client() as c:
            return list(c.scan_iter(pattern))

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3 server on loopback (standing in for S3 or MinIO); its URL. moto keeps
    its buckets in this process, shared by every moto server in it: none are left behind."""
    import urllib.request

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        reset = urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")
        with urllib.request.urlopen(reset, timeout=10) as answer:
            assert answer.status == 200
        server.stop()
