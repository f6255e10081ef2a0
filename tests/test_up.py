"""``affinity up``: starts a cluster, answers an inference, stops leaving nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from cli.up import example_requests
from tests.harness import RedisServer, free_port, request, wait_until
from worker.host_memory import usable_memory


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_serves_and_stops_cleanly(zoo: Path, tmp_path: Path) -> None:
    port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFFINITY_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["AFFINITY_ADMIN_TOKEN"] = "up-token"
    log = (tmp_path / "up.log").open("wb")
    memory = ["--cpu-memory", "8MiB", "--eviction", "gds"]  # CPU affinity: on by default
    args = ["up", "--workers", "2", "--models", str(zoo), "--port", str(port), "--grpc-port", str(grpc_port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", *args, *memory],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        output = wait_until(
            lambda: (text := (tmp_path / "up.log").read_text()) and "is up" in text and text, timeout=90, interval=0.2
        )
        assert f"http://127.0.0.1:{port}" in output
        assert f"grpc:    127.0.0.1:{grpc_port}" in output
        children = _children(proc.pid)
        assert len(children) == 3, "two workers and a balancer"

        # The banner's own curl example works as printed.
        example = re.search(r"-d '(\{.*\})'", output)
        assert example is not None
        model = re.search(r"/v2/models/([^/]+)/infer", output)
        assert model is not None
        resp = request(
            f"http://127.0.0.1:{port}", "POST", f"/v2/models/{model.group(1)}/infer", example.group(1).encode()
        )
        assert resp.status == 200, resp.body
        assert orjson.loads(resp.body)["outputs"]
        # Every worker got the memory flags, and the admin token through its environment.
        worker = "http://" + resp.headers["x-served-by"]
        assert request(worker, "GET", "/admin/memory").status == 401
        report = request(worker, "GET", "/admin/memory", headers={"Authorization": "Bearer up-token"}).json()
        assert report["policy"] == "gds" and report["tiers"][0]["budget"] == 8 << 20
        assert "up-token" not in " ".join(Path(f"/proc/{c}/cmdline").read_text() for c in children)
        # Placement: each worker runs on its own share of the cores, with that many threads.
        cores = os.cpu_count() or 1
        workers = [c for c in children if "\0worker\0" in Path(f"/proc/{c}/cmdline").read_text()]
        pinned = [os.sched_getaffinity(w) for w in workers]
        assert all(pinned) and len(set().union(*pinned)) == min(cores, 2), "disjoint shares of the cores"
        if cores >= 2:
            assert not pinned[0] & pinned[1]
        threads = {Path(f"/proc/{w}/cmdline").read_text().split("\0--threads\0")[1].split("\0")[0] for w in workers}
        assert threads == {str(max(1, cores // 2))}

        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        deadline = time.monotonic() + 10
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [c for c in children if _alive(c)], "no process is left behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_up_generates_a_demo_zoo_and_uses_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFFINITY_")}
    env["TMPDIR"] = str(tmp_path)
    log = (tmp_path / "up.log").open("wb")
    args = [
        "up",
        "--workers",
        "1",
        "--port",
        str(port),
        "--grpc-port",
        "0",
        "--zoo-count",
        "4",
        "--zoo-max-size",
        "1MiB",
    ]
    args += ["--redis-url", redis_server.url]
    with redis_server.client() as client:
        client.flushdb()
    proc = subprocess.Popen([sys.executable, "-m", "cli", *args], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: "is up" in (tmp_path / "up.log").read_text(), timeout=90, interval=0.2)
        rows = request(f"http://127.0.0.1:{port}", "POST", "/v2/repository/index", b"{}").json()
        assert len({r["name"] for r in rows}) == 4
        # One worker: the default CPU budget is half the machine's memory, all its own.
        [zoo] = list(tmp_path.glob("affinity-zoo-*"))
        name, body = example_requests(zoo)[0]
        served_by = request(f"http://127.0.0.1:{port}", "POST", f"/v2/models/{name}/infer", body).headers
        [cpu] = request("http://" + served_by["x-served-by"], "GET", "/admin/memory").json()["tiers"]
        assert cpu["budget"] == int(usable_memory() * 0.5)
        # The banner's example request was answered and stored in the shared Redis layer.
        with redis_server.client() as client:
            wait_until(lambda: client.dbsize() > 0)
        zoos = list(tmp_path.glob("affinity-zoo-*"))
        assert len(zoos) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not zoos[0].exists(), "the generated zoo is removed on exit"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
