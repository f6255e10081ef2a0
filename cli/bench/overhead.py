"""``affinity bench overhead``: what the balancer costs, next to nginx, in one run.

Rows (all with wrk, one thread, the same connections and the same request):
  nginx proxy -> static       nginx hashing by model in front of a static
                              backend that answers instantly: nginx's own rate
  balancer, cache hit         the same request, answered from the cache
  balancer miss -> static     Cache-Control: no-cache, in front of the same
                              static backend: the balancer's own miss-path cost
  ..., 2 processes            the same, `affinity balancer --processes 2`
  nginx proxy -> workers      nginx hashing by model in front of real workers
  balancer miss -> workers    no-cache, in front of the same workers
  direct -> worker            the model's owner, no proxy at all
Ratios are taken within the run (the machine is shared and noisy).
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from cli.bench.outputs import wrk_outputs
from cli.up import Cluster, UpOptions, example_requests, free_port, http_status, wait_ready
from common.process import stop
from loadgen import nginx, wrk

GOALS = {
    "balancer, cache hit": ("nginx proxy -> static", 1.0),
    "balancer miss -> static": ("nginx proxy -> static", 0.5),
    "balancer miss -> static, 2 processes": ("nginx proxy -> static", 0.5),
    "balancer miss -> workers": ("nginx proxy -> workers", 0.5),
}


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    import urllib.request

    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers})  # noqa: S310 - our own http:// URL
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - our own http:// URL
        return resp.read(), dict(resp.headers)


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"benchmark set-up is wrong: {what}")


def run_overhead(duration: float, connections: int, models: Path | None, out: Path) -> int:
    if not wrk.available():
        print("affinity bench: this scenario needs wrk (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        if models is None:
            from worker.zoo import make_zoo

            models = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="affinity-bench-")))
            make_zoo(models, count=4, min_size=1 << 20, max_size=4 << 20)
        cluster = Cluster(
            UpOptions(workers=2, models=models, port=0, grpc_port=0, policy="consistent", log_level="WARNING")
        )
        stack.callback(cluster.stop)
        endpoint = cluster.start(models)
        name, body = example_requests(models)[0]
        path = f"/v2/models/{name}/infer"
        answer, headers = _post(endpoint + path, body, {"Cache-Control": "no-store"})
        owner = "http://" + headers["X-Served-By"]

        results: dict[str, wrk.WrkResult] = {}
        no_cache = {"Cache-Control": "no-cache"}
        if nginx.available():
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="affinity-nginx-")))
            index = orjson.dumps([{"name": name, "version": "1", "state": "READY"}])
            ports = (free_port(), free_port(), free_port())
            proxy = nginx.Nginx(root, ports, cluster.worker_urls, answer, index).start()
            stack.callback(proxy.stop)
            static = f"http://127.0.0.1:{proxy.static_port}"
            port = free_port()

            def balancer(at: int, *extra: str) -> subprocess.Popen[bytes]:
                """A balancer in front of the static backend on port ``at``."""
                args = ["balancer", "--workers", static, "--port", str(at), "--grpc-port", "0", *extra]
                return cluster.spawn("balancer", [*args, "--log-level", "WARNING"])

            front = balancer(port)
            wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", front)
            static_proxy = f"http://127.0.0.1:{proxy.static_proxy_port}{path}"
            front_url = f"http://127.0.0.1:{port}{path}"
            # Each row must reach the backend it is named for: the static one answers its canned bytes.
            _expect(_post(static_proxy, body, {})[0] == answer, "nginx -> static did not reach the static backend")
            _expect(_post(front_url, body, no_cache)[1].get("X-Served-By") == static[7:], "balancer -> static")
            results["nginx proxy -> static"] = wrk.run(static_proxy, body, duration, connections)
            results["balancer miss -> static"] = wrk.run(front_url, body, duration, connections, no_cache)
            # The same with two balancer processes sharing the port (--processes 2): where it starts to pay.
            port2 = free_port()
            front2 = balancer(port2, "--processes", "2")
            wait_ready(f"http://127.0.0.1:{port2}/v2/health/ready", front2)
            two = f"http://127.0.0.1:{port2}{path}"
            _expect(_post(two, body, no_cache)[1].get("X-Served-By") == static[7:], "balancer x2 -> static")
            results["balancer miss -> static, 2 processes"] = wrk.run(two, body, duration, connections, no_cache)
            stop([front2])
        else:
            print("nginx is not installed: skipping the nginx rows (Debian: apt-get install nginx)", file=sys.stderr)
        results["balancer, cache hit"] = wrk.run(endpoint + path, body, duration, connections)
        if nginx.available():
            workers_proxy = f"http://127.0.0.1:{proxy.proxy_port}{path}"
            _expect(_post(workers_proxy, body, {})[0] == answer, "nginx -> workers did not reach a worker")
            results["nginx proxy -> workers"] = wrk.run(workers_proxy, body, duration, connections)
        results["balancer miss -> workers"] = wrk.run(endpoint + path, body, duration, connections, no_cache)
        results["direct -> worker"] = wrk.run(owner + path, body, duration, connections)
        assert http_status(endpoint + "/v2/health/ready") == 200
    text = report(results, name, duration, connections)
    title = f"The balancer next to nginx: wrk, {connections} connections, model {name}"
    references = ("nginx proxy -> static", "nginx proxy -> workers", "direct -> worker")
    for written in wrk_outputs(out, "overhead", title, results, text, references):
        print(f"wrote {written}")
    print(text)
    return 0


def report(results: dict[str, wrk.WrkResult], model: str, duration: float, connections: int) -> str:
    lines = [
        f"`affinity bench overhead` on {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}: model `{model}`, wrk -t1 -c{connections} -d{duration:g}s",
        "",
        "| path | req/s | p50 ms | p99 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, r in results.items():
        lines.append(
            f"| {label} | {r.requests_per_second:,.0f} | {r.p50_seconds * 1e3:.2f} | {r.p99_seconds * 1e3:.2f} "
            f"| {r.errors} |"
        )
    lines += ["", "| ratio (same run) | measured | goal |", "| --- | ---: | ---: |"]
    for label, (reference, goal) in GOALS.items():
        if label in results and reference in results:
            ratio = results[label].requests_per_second / results[reference].requests_per_second
            lines.append(f"| {label} / {reference} | {ratio:.2f}x | >= {goal:g}x |")
    if "balancer miss -> workers" in results and "direct -> worker" in results:
        ratio = (
            results["balancer miss -> workers"].requests_per_second / results["direct -> worker"].requests_per_second
        )
        lines.append(f"| balancer miss -> workers / direct -> worker | {ratio:.2f}x | |")
    return "\n".join(lines)
