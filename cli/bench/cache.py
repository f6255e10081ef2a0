"""``affinity bench cache``: the response cache's paths, next to a bare Redis GET, in one run.

Rows (sequential requests on one keep-alive connection, so each is a latency):
  redis GET (bare)       redis-py fetching a stored answer's bytes: the floor for a Redis hit
  hit, in-process        the same request again: the balancer's LRU
  hit, Redis layer       a second balancer that has never seen the request: Redis, then its LRU
  miss                   a request never seen: the model (~20 ms) runs
Then, with a client sending ~4 MiB JSON bodies (each new: keyed in the key
process) next to a client sending small hits: the small hits' latency with and
without the large bodies, and the balancer's event-loop lag over the window
(from its affinity_event_loop_lag_seconds histogram, and without the time its
thread waited for a CPU: affinity_event_loop_own_lag_seconds). Then the load
generator at a fixed open-loop rate with repeat probabilities 0, 0.3 and 0.9:
hit ratio and latency.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from prometheus_client.parser import text_string_to_metric_families

from cli.up import Cluster, UpOptions
from common.process import free_port, spawn, wait_ready
from loadgen.report import Report
from worker.zoo import make_model

SLOW = ("slow", {"in_features": 512, "hidden": [4096, 4096, 4096, 4096], "out_features": 16})
WIDE = ("wide", {"in_features": 8192, "hidden": [64], "out_features": 10})
LARGE_ROWS = 40  # 40 x 8192 FP32 values: about 3.4 MiB of JSON


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    samples_ms: list[float]

    def pct(self, p: float) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


class Client:
    """One keep-alive connection, timing each exchange."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)

    def post(self, path: str, body: bytes) -> tuple[float, int, dict[str, str]]:
        started = time.perf_counter()
        self.conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        resp.read()
        return (time.perf_counter() - started) * 1e3, resp.status, {k.lower(): v for k, v in resp.getheaders()}

    def get(self, path: str) -> bytes:
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        return resp.read()

    def close(self) -> None:
        self.conn.close()


def _body(rows: int, width: int, rng: np.random.Generator) -> bytes:
    data = rng.standard_normal((rows, width)).astype(np.float32)
    inputs = [{"name": "input", "datatype": "FP32", "shape": [rows, width], "data": data}]
    return orjson.dumps({"inputs": inputs}, option=orjson.OPT_SERIALIZE_NUMPY)


def _timed(client: Client, path: str, bodies: list[bytes], state: str) -> list[float]:
    out = []
    for body in bodies:
        ms, status, headers = client.post(path, body)
        if status != 200 or headers.get("x-cache") != state:
            raise RuntimeError(f"benchmark set-up is wrong: expected a {state}, got {status} {headers.get('x-cache')}")
        out.append(ms)
    return out


LAG_FAMILIES = ("affinity_event_loop_lag_seconds", "affinity_event_loop_own_lag_seconds")


def _lag_buckets(text: str) -> dict[str, dict[float, float]]:
    """Each lag histogram's cumulative buckets: the whole lag, and the process's own."""
    found: dict[str, dict[float, float]] = {name: {} for name in LAG_FAMILIES}
    for family in text_string_to_metric_families(text):
        if family.name in found:
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    found[family.name][float(sample.labels["le"])] = sample.value
    return found


def _lag_window(before: dict[float, float], after: dict[float, float]) -> tuple[int, int, float]:
    """(samples, samples over 5 ms, upper bound of the largest lag) within a window."""
    delta = {bound: after[bound] - before.get(bound, 0.0) for bound in after}
    total = delta[float("inf")]
    top = min(bound for bound in sorted(delta) if delta[bound] == total)
    return int(total), int(total - delta[0.005]), top


def _redis(root: Path) -> tuple[str, Callable[[], None]] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(root)]
    proc = spawn(args, output=(root / "redis.log").open("ab"))
    import redis

    for _ in range(200):
        with contextlib.suppress(redis.RedisError), redis.Redis(port=port) as client:
            if client.ping():
                break
        time.sleep(0.05)

    def stop() -> None:
        proc.terminate()
        proc.wait(10)

    return f"redis://127.0.0.1:{port}/0", stop


def run_cache(samples: int, duration: float, out: Path) -> int:
    from loadgen.config import LoadConfig
    from loadgen.runner import run_once

    rng = np.random.default_rng(7)
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="affinity-bench-cache-")))
        models = root / "models"
        for seed, (name, args) in enumerate((SLOW, WIDE)):
            make_model(models, name, "mlp", args, seed)
        redis_found = _redis(root)
        if redis_found is None:
            print("redis-server is not installed: the Redis rows are skipped (Debian: apt-get install redis-server)")
        redis_url = redis_found[0] if redis_found else None
        if redis_found:
            stack.callback(redis_found[1])
        options = UpOptions(workers=2, models=models, port=0, grpc_port=0, redis_url=redis_url, log_level="WARNING")
        cluster = Cluster(options)
        stack.callback(cluster.stop)
        endpoint = cluster.start(models)
        client = Client(endpoint)
        stack.callback(client.close)
        slow_path, wide_path = "/v2/models/slow/infer", "/v2/models/wide/infer"
        rows: list[Row] = []

        first = _body(1, 512, rng)
        client.post(slow_path, first)  # loads and warms the model
        rows.append(Row("hit, in-process", _timed(client, slow_path, [first] * samples, "hit")))
        misses = [_body(1, 512, rng) for _ in range(max(50, samples // 10))]
        rows.append(Row("miss (the model runs)", _timed(client, slow_path, misses, "miss")))
        if redis_url is not None:
            import redis

            key = next(iter(redis.Redis.from_url(redis_url).scan_iter("affinity:v2:slow:*")))
            with redis.Redis.from_url(redis_url) as bare:
                bare.get(key)
                gets = []
                for _ in range(samples):
                    started = time.perf_counter()
                    bare.get(key)
                    gets.append((time.perf_counter() - started) * 1e3)
            rows.insert(0, Row("redis GET (bare, redis-py)", gets))
            port = free_port()
            other = cluster.spawn(
                "balancer",
                ["balancer", "--workers", ",".join(cluster.worker_urls), "--port", str(port), "--redis-url", redis_url,
                 "--grpc-port", "0", "--log-level", "WARNING"],
            )  # fmt: skip
            wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", other)
            second = Client(f"http://127.0.0.1:{port}")
            stack.callback(second.close)
            rows.insert(2, Row("hit, Redis layer", _timed(second, slow_path, misses, "hit")))

        # Large bodies next to small hits.
        small_alone = _timed(client, slow_path, [first] * samples, "hit")
        large = [_body(LARGE_ROWS, 8192, rng) for _ in range(8)]
        stop = threading.Event()
        large_ms: list[float] = []

        def send_large() -> None:
            sender = Client(endpoint)
            i = 0
            while not stop.is_set():  # every body new (its first value changed): keyed in the key process
                ms, status, _ = sender.post(wide_path, _vary(large[i % len(large)], i))
                if status == 200:
                    large_ms.append(ms)
                i += 1
            sender.close()

        before = _lag_buckets(client.get("/metrics").decode())
        sender = threading.Thread(target=send_large)
        sender.start()
        time.sleep(0.5)
        small_during = _timed(client, slow_path, [first] * samples, "hit")
        stop.set()
        sender.join()
        after = _lag_buckets(client.get("/metrics").decode())
        lag = [_lag_window(before[name], after[name]) for name in LAG_FAMILIES]

        # The load generator at a fixed rate: repeat probability against hit ratio.
        sweeps = []
        for repeat in (0.0, 0.3, 0.9):
            config = LoadConfig(
                url=endpoint, rate=100.0, duration=duration, warmup=1.0, repeat=repeat, models=("slow",),
                out=out / f"repeat-{repeat:g}", seed=int(repeat * 10) + 101,
            )  # fmt: skip
            report, _ = run_once(config, title=f"repeat {repeat:g}")
            sweeps.append((repeat, report))
    text = _table(rows, small_alone, small_during, large_ms, lag, sweeps, samples)
    for path in write_outputs(out, text, rows, small_alone, small_during, sweeps):
        print(f"wrote {path}")
    print(text)
    return 0


def write_outputs(
    out: Path,
    text: str,
    rows: list[Row],
    small_alone: list[float],
    small_during: list[float],
    sweeps: list[tuple[float, Report]],
) -> list[Path]:
    """cache.md, cache.json (percentiles per row), cache-latency.png (the
    sequential rows' CDFs, small hits with and without large bodies beside
    them) and cache-repeat.png (the load generator's runs by repeat rate)."""
    from cli.bench.charts import cdfs
    from cli.bench.outputs import write_table
    from loadgen.plots import plot_compare

    every = [*rows, Row("small hits, alone", small_alone), Row("small hits, large bodies arriving", small_during)]
    data = {r.label: {"p50_ms": r.pct(0.5), "p99_ms": r.pct(0.99), "samples": len(r.samples_ms)} for r in every}
    written = write_table(out, "cache", text, data)
    title = "Sequential requests, one keep-alive connection: cache hits, misses, a bare Redis GET"
    written.append(
        cdfs(out / "cache-latency.png", title, {r.label: r.samples_ms for r in every}, "latency (ms, log scale)")
    )
    labels = [f"repeat {repeat:g} (hit ratio {report.cache.hit_ratio:.2f})" for repeat, report in sweeps]
    title = "Open loop at a fixed rate: how often a payload repeats"
    written.append(plot_compare(labels, [r for _, r in sweeps], out / "cache-repeat.png", title))
    return written


def _vary(body: bytes, i: int) -> bytes:
    """A new body of the same shape: the first value changed, so the key is new."""
    at = body.index(b'"data":[') + len(b'"data":[')
    while body[at : at + 1] == b"[":  # nested rows
        at += 1
    end = body.index(b",", at)
    return body[:at] + f"{i}.5".encode() + body[end:]


def _table(
    rows: list[Row],
    small_alone: list[float],
    small_during: list[float],
    large_ms: list[float],
    lag: list[tuple[int, int, float]],
    sweeps: list[tuple[float, Report]],
    samples: int,
) -> str:
    lines = [
        f"`affinity bench cache` on {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}: {samples} sequential requests per row, one keep-alive connection",
        "",
        "| path | p50 ms | p99 ms |",
        "| --- | ---: | ---: |",
    ]
    by = {r.label: r for r in rows}
    lines += [f"| {r.label} | {r.pct(0.5):.3f} | {r.pct(0.99):.3f} |" for r in rows]
    miss = by["miss (the model runs)"].pct(0.5)
    hit = by["hit, in-process"].pct(0.5)
    lines += ["", "| ratio or gap (same run) | measured | goal |", "| --- | ---: | ---: |"]
    lines.append(f"| miss p50 / in-process hit p50 | {miss / hit:.0f}x | >= 10x |")
    if "redis GET (bare, redis-py)" in by:
        bare = by["redis GET (bare, redis-py)"].pct(0.5)
        redis_hit = by["hit, Redis layer"].pct(0.5)
        lines.append(f"| in-process hit p50 - bare GET p50 | {hit - bare:+.3f} ms | <= 1 ms |")
        lines.append(f"| Redis-layer hit p50 - bare GET p50 | {redis_hit - bare:+.3f} ms | <= 1 ms |")
        lines.append(f"| miss p50 / Redis-layer hit p50 | {miss / redis_hit:.0f}x | >= 10x |")
    (total, over, top), (_, own_over, own_top) = lag
    alone, during = Row("", small_alone), Row("", small_during)
    lines += [
        "",
        f"While ~3.4 MiB JSON bodies arrived ({len(large_ms)} answered, p50 {statistics.median(large_ms):.1f} ms):",
        "",
        "| small hits | p50 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: |",
        f"| alone | {alone.pct(0.5):.3f} | {alone.pct(0.99):.3f} | {max(small_alone):.2f} |",
        f"| with large bodies | {during.pct(0.5):.3f} | {during.pct(0.99):.3f} | {max(small_during):.2f} |",
        "",
        f"Balancer event-loop lag over that window: {total} samples, {over} over 5 ms, "
        f"largest below {top * 1e3:g} ms; its own (the waits for a CPU taken out): {own_over} over 5 ms, "
        f"largest below {own_top * 1e3:g} ms (goal: under 5 ms).",
        "",
        "| repeat probability | offered/s | hit ratio | p50 ms | p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for repeat, report in sweeps:
        lines.append(
            f"| {repeat:g} | {report.offered_rps:.0f} | {report.cache.hit_ratio:.2f} | "
            f"{report.latency_ms.p50:.2f} | {report.latency_ms.p99:.2f} |"
        )
    return "\n".join(lines)
