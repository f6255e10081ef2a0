"""Real processes on loopback for tests: workers, balancers, a private redis-server.

Every process is started with explicit flags on a free port, logs to a file
under the test's temp dir (shown when it fails to start), and is stopped by the
fixture that started it, SIGTERM then SIGKILL, whatever the test's outcome.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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

    def start(self) -> Proc:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AFFINITY_")}
        env["PYTHONUNBUFFERED"] = "1"
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
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
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)
            if sig == signal.SIGKILL:
                self.popen.wait()


def affinity(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


@dataclass
class Server:
    proc: Proc
    url: str

    @property
    def id(self) -> str:
        return self.url.removeprefix("http://")

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


def start_worker(models: Path, logdir: Path, *extra: str) -> Server:
    port = free_port()
    args = affinity("worker", "--models", str(models), "--port", str(port), "--threads", "1", *extra)
    proc = Proc(f"worker-{port}", args, logdir / f"worker-{port}.log").start()
    return Server(proc, f"http://127.0.0.1:{port}")


def start_balancer(workers: list[Server], logdir: Path, *extra: str) -> Server:
    port = free_port()
    urls = ",".join(w.url for w in workers)
    args = affinity("balancer", "--workers", urls, "--port", str(port), "--index-refresh", "2", *extra)
    proc = Proc(f"balancer-{port}", args, logdir / f"balancer-{port}.log").start()
    return Server(proc, f"http://127.0.0.1:{port}")


@dataclass
class RedisServer:
    logdir: Path
    port: int = field(default_factory=free_port)
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH: install Redis (Debian: apt-get install redis-server)")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.logdir)]
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


@contextlib.contextmanager
def private_cluster(
    models: Path, logdir: Path, workers: int = 2, *balancer_args: str
) -> Iterator[tuple[list[Server], Server]]:
    """Workers and a balancer of the test's own (for tests that kill or stop them)."""
    started = [start_worker(models, logdir) for _ in range(workers)]
    balancer: Server | None = None
    try:
        for w in started:
            w.wait_ready()
        balancer = start_balancer(started, logdir, *balancer_args).wait_ready()
        yield started, balancer
    finally:
        if balancer is not None:
            balancer.proc.stop()
        for w in started:
            w.proc.stop()
