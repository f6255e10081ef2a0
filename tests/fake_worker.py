"""A controllable V2 worker on loopback, for cases a real worker cannot produce on
demand: a 502 or a 503 without Retry-After, a 507, an answer held for a while,
a repository load route. It speaks just enough of the protocol for a balancer:
``GET /v2`` (its id and capacity), ``GET /v2/health/ready``, ``POST
/v2/repository/index``, inference and the repository load/unload routes.

``script`` decides each inference answer: ``(status, headers, body)``, or
``None`` for a normal 200. It records every request it saw (path, headers).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

Answer = tuple[int, dict[str, str], bytes]


def ok_answer(model: str) -> bytes:
    return orjson.dumps({"model_name": model, "model_version": "1", "outputs": []})


@dataclass
class FakeWorker:
    worker_id: str
    models: tuple[str, ...] = ("m",)
    capacity: int = 1 << 30
    script: Callable[[str], Answer | None] = lambda path: None
    hold: float = 0.0  # seconds each inference is held before its answer
    ready: bool = True
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # (method, path, headers)
    index_calls: int = 0
    port: int = 0  # 0: a free one
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def infers(self) -> int:
        return sum(1 for _, path, _ in self.seen if path.endswith("/infer"))

    def start(self) -> FakeWorker:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                fake.seen.append(("GET", self.path, dict(self.headers)))
                if self.path == "/v2":
                    meta = {"name": "fake", "version": "0", "worker_id": fake.worker_id, "capacity": fake.capacity}
                    self._answer(200, orjson.dumps(meta))
                elif self.path == "/v2/health/ready":
                    self._answer(200 if fake.ready else 503, orjson.dumps({"ready": fake.ready}))
                else:
                    self._answer(404, b'{"error": "no such route"}')

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(length)
                fake.seen.append(("POST", self.path, dict(self.headers)))
                if self.path == "/v2/repository/index":
                    fake.index_calls += 1
                    rows = [{"name": m, "version": "1", "state": "READY", "deterministic": False} for m in fake.models]
                    self._answer(200, orjson.dumps(rows))
                elif self.path.startswith("/v2/repository/models/"):
                    self._answer(200, b"{}")
                elif self.path.endswith("/infer"):
                    if fake.hold:
                        time.sleep(fake.hold)
                    scripted = fake.script(self.path)
                    if scripted is None:
                        model = self.path.split("/")[3]
                        self._answer(200, ok_answer(model), {"X-Model-Source": "cpu"})
                    else:
                        status, headers, body = scripted
                        self._answer(status, body, headers)
                else:
                    self._answer(404, b'{"error": "no such route"}')

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
