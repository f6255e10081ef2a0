"""The load generator over real sockets: an in-test server that stalls once
(coordinated omission, drops, timeouts), a closed port, and the real cluster
(report, plots, several processes, the CLI's sweep and compare modes)."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from common.http_router import Router
from common.http_server import HttpServer, Request, Response
from common.rest import render_error
from loadgen.config import LoadConfig
from loadgen.engine import Engine
from loadgen.histogram import LatencyHistogram
from loadgen.processes import prepare, run_async
from loadgen.report import Report
from loadgen.runner import run_once
from loadgen.stats import RunStats
from loadgen.target import ModelSpec, Target, discover
from protocol.types import TensorSpec
from tests.conftest import ZOO_MODELS
from tests.harness import Server, free_port

ROOT = Path(__file__).resolve().parent.parent
ANSWER = b'{"model_name":"m","outputs":[{"name":"y","datatype":"FP32","shape":[1,1],"data":[0.5]}]}'
MODEL = ModelSpec("m", (TensorSpec("input", "FP32", (-1, 4)),), max_batch_size=8)
PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class Stall:
    """Answers at once, except that the ``after``-th request freezes the whole
    server for ``seconds``: every request that arrives meanwhile waits too."""

    after: int
    seconds: float
    seen: int = 0
    until: float = 0.0

    async def infer(self, request: Request) -> Response:
        self.seen += 1
        if self.seen == self.after:
            self.until = time.monotonic() + self.seconds
        if (left := self.until - time.monotonic()) > 0:
            await asyncio.sleep(left)
        return Response(200, ANSWER, "application/json", {"X-Cache": "miss", "X-Served-By": "stall"})


@asynccontextmanager
async def stall_server(stall: Stall) -> AsyncIterator[str]:
    router = Router()
    router.add("POST", "/v2/models/{name}/infer", stall.infer)
    server = HttpServer(router, render_error)
    port = await server.start("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.shutdown(grace=5)


async def generate(config: LoadConfig, url: str) -> RunStats:
    client, source = prepare(config, Target(url, (MODEL,)))
    return await Engine(config, client, source).run(time.monotonic() + 0.05)


def count_at_least(hist: LatencyHistogram, seconds: float) -> int:
    return sum(
        item.count_at_value_iterated_to
        for item in hist.hdr.get_recorded_iterator()
        if item.value_iterated_to >= seconds * 1e6
    )


def run(main: Coroutine[Any, Any, RunStats]) -> RunStats:
    return asyncio.run(asyncio.wait_for(main, 60))


def assert_counts_add_up(stats: RunStats) -> None:
    assert stats.offered == stats.ok + stats.errors + stats.dropped
    assert sum(s.offered for s in stats.seconds.values()) == stats.offered


def test_open_loop_latency_includes_the_queue_behind_a_stall() -> None:
    """A 1 s stall at ~0.2 s into a 100/s constant stream: the ~100 requests
    scheduled during it wait for its end, so about half of them see more than
    0.5 s. A closed-loop client (the coordinated-omission generator) waits
    with the server and records a single slow request."""
    config = LoadConfig(rate=100.0, arrivals="constant", duration=1.6, timeout=10)

    async def both() -> tuple[RunStats, RunStats]:
        async with stall_server(Stall(after=20, seconds=1.0)) as url:
            open_loop = await generate(config, url)
        async with stall_server(Stall(after=20, seconds=1.0)) as url:
            closed = await generate(replace(config, concurrency=1), url)
        return open_loop, closed

    open_loop, closed = asyncio.run(asyncio.wait_for(both(), 60))
    assert_counts_add_up(open_loop)
    assert open_loop.errors == open_loop.dropped == 0
    assert open_loop.latency.max() >= 0.9
    assert count_at_least(open_loop.latency, 0.5) >= 30
    assert count_at_least(open_loop.latency, 0.1) >= 60
    # the same stall, measured from each actual send: one slow request
    assert closed.latency.max() >= 0.9
    assert count_at_least(closed.latency, 0.5) == 1


def test_requests_over_the_outstanding_cap_are_dropped_and_counted() -> None:
    config = LoadConfig(rate=100.0, arrivals="constant", duration=1.6, max_outstanding=5, timeout=10)

    async def main() -> RunStats:
        async with stall_server(Stall(after=20, seconds=1.0)) as url:
            return await generate(config, url)

    stats = run(main())
    assert_counts_add_up(stats)
    assert stats.errors == 0
    assert 50 <= stats.dropped <= 100  # ~100 due during the stall, 5 of them in flight
    assert stats.ok == stats.offered - stats.dropped
    assert sum(s.dropped for s in stats.seconds.values()) == stats.dropped
    assert stats.latency.max() >= 0.9  # the 5 that got in still waited out the stall


def test_timeouts_and_refused_connections_are_errors_by_kind() -> None:
    config = LoadConfig(rate=100.0, arrivals="constant", duration=1.6, timeout=0.3)

    async def main() -> RunStats:
        async with stall_server(Stall(after=20, seconds=1.0)) as url:
            return await generate(config, url)

    stats = run(main())
    assert_counts_add_up(stats)
    assert stats.errors_by_kind["timeout"] >= 30
    assert stats.latency.max() < 0.3 + 0.1  # only answers are in the latency histogram

    refused = run(generate(replace(config, duration=0.5), f"http://127.0.0.1:{free_port()}"))
    assert_counts_add_up(refused)
    assert refused.ok == 0 and refused.offered >= 40
    assert dict(refused.errors_by_kind) == {"connection": refused.offered}


def test_discovery_reads_models_inputs_and_batch_limits(balancer: Server) -> None:
    target = run_async(discover(balancer.url))
    names = [m.name for m in target.models]
    assert set(ZOO_MODELS) <= set(names)
    assert names == sorted(names)
    mlp = next(m for m in target.models if m.name == "mlp-00")
    assert mlp.max_batch_size == 64
    assert [(i.name, i.datatype, i.shape[0]) for i in mlp.inputs] == [("input", "FP32", -1)]


def test_a_run_against_the_cluster_writes_a_report_and_plots(
    balancer: Server, workers: list[Server], tmp_path: Path
) -> None:
    config = LoadConfig(
        url=balancer.url,
        rate=60.0,
        duration=2.0,
        warmup=0.5,
        models=ZOO_MODELS,
        repeat=0.5,
        payload_size=2048,
        popularity="zipf:1.1",
        seed=4,
        out=tmp_path,
    )
    report, files = run_once(config)
    # Only a generator's own process freezes its objects (the CLI, a child): never a caller's.
    assert gc.get_freeze_count() == 0
    assert [f.name for f in files] == ["report.json", "latency_cdf.png", "over_time.png"]
    for plot in files[1:]:
        assert plot.read_bytes().startswith(PNG)
    saved = Report.read(tmp_path / "report.json")
    assert saved == Report.from_json(orjson.loads(orjson.dumps(report.to_json())))
    c = saved.counts
    assert c.offered == c.ok + c.errors + c.dropped and c.sent == c.ok + c.errors
    assert c.offered > 60
    assert c.errors == c.dropped == 0, saved.errors_by_kind  # every payload matched its model's inputs
    assert set(saved.by_model) <= set(ZOO_MODELS) and sum(saved.by_model.values()) == c.offered
    assert saved.cache.hit > 0 and saved.cache.hit + saved.cache.miss == c.ok
    assert set(saved.served_by) <= {w.id for w in workers}
    assert sum(saved.served_by.values()) == saved.cache.miss  # hits are not work done by a worker
    assert set(saved.model_source) <= {"cpu", "disk"}
    assert saved.latency_ms.p50 <= saved.latency_ms.p99 <= saved.latency_ms.max
    assert LatencyHistogram.decode(saved.histogram).count == c.ok
    assert sum(row.offered for row in saved.series) == c.offered
    assert saved.generator.requests > c.offered  # the warm-up's requests were sent, not reported
    assert saved.generator.cpu_per_request_us > 0


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AFFINITY_")}
    return subprocess.run(
        [sys.executable, "-m", "cli", "loadgen", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**base, **(env or {})},
        check=False,
    )


def test_cli_runs_several_processes_into_one_report(balancer: Server, tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = cli(
        "--url", balancer.url, "--models", "mlp-00,logreg-03", "--duration", "1.5", "--processes", "2",
        "--repeat", "0.9", "--out", str(out),
        env={"AFFINITY_LOADGEN_RATE": "80"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "offered" in done.stdout and "report.json" in done.stdout
    report = Report.read(out / "report.json")
    assert report.config["rate"] == 80.0 and report.generator.processes == 2
    c = report.counts
    assert c.offered == c.ok + c.errors + c.dropped and c.errors == 0
    assert 60 <= c.offered <= 200
    assert report.cache.hit_ratio > 0.5
    assert len(report.series) <= 3  # both processes' seconds line up on one clock


def test_cli_sweep_then_compare(balancer: Server, tmp_path: Path) -> None:
    sweep = cli(
        "--url", balancer.url, "--models", "mlp-00", "--sweep", "40,20", "--duration", "1", "--out", str(tmp_path),
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr
    summary = orjson.loads((tmp_path / "sweep.json").read_bytes())
    assert [p["offered_rate"] for p in summary["points"]] == [20.0, 40.0]
    assert (tmp_path / "sweep.png").read_bytes().startswith(PNG)
    assert "knee" in sweep.stdout
    runs = [tmp_path / "rate-20", tmp_path / "rate-40"]
    compared = cli("--compare", *map(str, runs), "--out", str(tmp_path / "cmp"))
    assert compared.returncode == 0, compared.stderr
    assert "rate-20" in compared.stdout and "rate-40" in compared.stdout
    assert (tmp_path / "cmp" / "compare.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize("protocol", ["rest-binary", "grpc"])
def test_cli_runs_the_binary_and_grpc_protocols(
    wire_cluster: tuple[list[Server], Server], protocol: str, tmp_path: Path
) -> None:
    """Every request of every datatype is one the cluster answers, repeats are hits.
    (A seed per protocol: one seed's tensors would be hits whatever the encoding.)"""
    workers, balancer = wire_cluster
    url = f"grpc://{balancer.grpc}" if protocol == "grpc" else balancer.url
    models = "identity-bytes,identity-fp16,identity-uint64,identity-bool,mlp-00,transformer-02"
    done = cli(
        "--url", url, "--protocol", protocol, "--models", models, "--rate", "60", "--duration", "1.5",
        "--repeat", "0.5", "--seed", str(len(protocol)), "--out", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = Report.read(tmp_path / "report.json")
    c = report.counts
    assert c.offered > 30 and c.errors == c.dropped == 0, report.errors_by_kind
    assert report.cache.hit > 0 and report.cache.hit + report.cache.miss == c.ok
    assert set(report.served_by) <= {w.id for w in workers} and report.served_by
