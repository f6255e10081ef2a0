"""The soak's RSS window starts once the balancer's cache is full: its fill is read
from the balancer's own metrics (a real balancer's text format, served here)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from balancer.metrics import BalancerMetrics
from cache.entry import CachedAnswer
from cache.response_cache import ResponseCache
from cli.bench.soak import cache_fill


@pytest.fixture
def metrics_server() -> Iterator[tuple[str, ResponseCache]]:
    cache = ResponseCache(64 << 10)
    metrics = BalancerMetrics(lambda name: True)
    metrics.watch_cache(cache)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = metrics.render()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", cache
    finally:
        server.shutdown()
        server.server_close()


def test_cache_fill_follows_the_cache(metrics_server: tuple[str, ResponseCache]) -> None:
    url, cache = metrics_server
    assert cache_fill(url) == 0.0
    for i in range(200):
        cache.local.put(f"k{i}", CachedAnswer(b'{"outputs":[]}' + b" " * 1000, "w"))
    fill = cache_fill(url)
    assert fill is not None and 0.95 <= fill <= 1.0, "full: it evicts to stay within its capacity"
    assert cache_fill("http://127.0.0.1:9") is None, "nothing listening: it cannot say"
