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


def test_growth_is_read_from_medians_so_a_peak_at_the_edge_is_not_growth() -> None:
    """A process that trims its heap moves up and down between trims: a sample at a peak
    must not read as growth, a steady climb must, and a climb that stopped halfway shows in
    the first half only."""
    from cli.bench.soak import rss_growth

    mib = 1 << 20
    window = []
    for i in range(121):  # ten minutes, a sample every 5 s
        t = 5.0 * i
        sawtooth = 400 * mib + (30 * mib if i % 4 == 3 or i == 120 else 0)  # peaks, one on the last sample
        climbing = 100 * mib + i * mib // 2  # +60 MiB over the window: a leak
        filled = 100 * mib + min(i, 40) * mib // 2  # +20 MiB in the first 200 s, then flat
        window.append((t, {1: sawtooth, 2: climbing, 3: filled}))
    rows = {r["process"]: r for r in rss_growth(window, {1: "trimming", 2: "leaking", 3: "filling"})}
    assert abs(rows["trimming"]["growth"]) < 0.01, "the last sample's peak is not growth"
    assert rows["leaking"]["growth"] > 0.4 and rows["leaking"]["late_growth"] > 0.15
    assert rows["filling"]["growth"] > 0.15 and rows["filling"]["late_growth"] == 0.0
    assert rss_growth([], {1: "x"}) == []
