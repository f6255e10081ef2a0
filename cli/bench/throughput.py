"""``affinity bench throughput``: many models under concurrent load, the whole system.

The workload: twelve MLPs (three Linear layers 512x512 with ReLU, safetensors),
V2 JSON requests with 512 FP32 values, every request's input different (no cache
hit, nothing coalesced), a model chosen at random per request, 16 connections
(wrk, closed loop). Rows, in one run:

  cluster                 `affinity up` with its defaults (two workers, one balancer)
  cluster, binary hop     the same, the balancer packing JSON requests into the binary extension
  cluster, half in memory the same with each worker's CPU budget holding half the models
  cluster, one model      every request to one model (batching)
  direct -> worker        one worker holding every model, no balancer
  open loop               the cluster under Poisson arrivals at ``--rate`` (the load generator)

Before the rows, each process's CPU per request is measured from /proc on the
cluster row, so a run also says where the time goes.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from cli.bench.outputs import wrk_outputs
from cli.bench.routing import metrics_text
from cli.up import Cluster, UpOptions
from common.process import affinity_command, free_port, spawn, wait_ready
from common.process import stop as stop_all
from common.units import Amount, format_size
from loadgen import wrk

MODELS = 12
WIDTH = 512
PER_MODEL = 3 * (WIDTH * WIDTH + WIDTH) * 4  # bytes of weights


def make_models(root: Path, quantize: str | None = None) -> list[str]:
    """The twelve MLPs, deterministic from their seeds, in the repository layout
    (``quantize``: their config's opt-in, e.g. ``int8``)."""
    names = []
    for m in range(MODELS):
        generator = torch.Generator().manual_seed(m)
        state = {}
        for layer in range(3):
            state[f"{2 * layer}.weight"] = torch.randn(WIDTH, WIDTH, generator=generator) * 0.01
            state[f"{2 * layer}.bias"] = torch.zeros(WIDTH)
        target = root / f"m{m}" / "1"
        target.mkdir(parents=True, exist_ok=True)
        save_file(state, str(target / "model.safetensors"))
        config = {
            "architecture": "mlp",
            "args": {"in_features": WIDTH, "hidden": [WIDTH, WIDTH], "out_features": WIDTH},
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, WIDTH]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, WIDTH]}],
            "max_batch_size": 64,
            **({"quantize": quantize} if quantize else {}),
        }
        (target / "config.json").write_text(json.dumps(config))
        names.append(f"m{m}")
    return names


def _cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    found = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found += _tree(int(entry))
    return found


def _measure(
    url: str, script: str, duration: float, connections: int, pids: dict[str, int]
) -> tuple[wrk.WrkResult, dict[str, float]]:
    trees = {role: _tree(pid) for role, pid in pids.items()}
    before = {role: sum(_cpu_seconds(p) for p in tree) for role, tree in trees.items()}
    result = wrk.run_script(url, script, duration, connections)
    after = {role: sum(_cpu_seconds(p) for p in tree) for role, tree in trees.items()}
    per_request = {role: (after[role] - before[role]) / max(result.requests, 1) * 1e6 for role in pids}
    return result, per_request


def answered_without_a_worker(url: str) -> float:
    """How many answers the balancer at ``url`` has given from its cache (either
    layer) or by joining an identical request in flight, since it started."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(metrics_text(url) or ""):
        if family.name in ("affinity_cache_hits", "affinity_cache_coalesced"):
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


def _cluster(models: Path, options: UpOptions, stack: contextlib.ExitStack) -> tuple[Cluster, str]:
    cluster = Cluster(options)
    stack.callback(cluster.stop)
    return cluster, cluster.start(models)


# (label, wrk's result or None, a note for a row wrk did not measure, answers not from a worker)
Row = tuple[str, wrk.WrkResult | None, str, int | None]


def run_throughput(duration: float, connections: int, rate: float, workers: int, out: Path) -> int:
    rows: list[Row] = []
    budgets: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="affinity-bench-throughput-")))
        names = make_models(root)

        # Every wrk run gets a script of its own (a fresh seed): a script run twice asks
        # again what it asked before, and the balancer's cache would answer it.
        def varied() -> str:
            return wrk.varied_script(names, "input", WIDTH)

        def one() -> str:
            return wrk.varied_script(names[:1], "input", WIDTH)

        def row(label: str, endpoint: str, script: str, pids: dict[str, int] | None = None) -> Row:
            """One wrk row, with the answers that came without a worker meanwhile; with
            ``pids``, each process's CPU per request too (into ``budgets``)."""
            before = answered_without_a_worker(endpoint)
            if pids is None:
                result = wrk.run_script(endpoint, script, duration, connections)
            else:
                result, per_request = _measure(endpoint, script, duration, connections, pids)
                budgets.update(per_request)
            return label, result, "", int(answered_without_a_worker(endpoint) - before)

        base = UpOptions(workers=workers, models=root, port=0, grpc_port=0, log_level="WARNING")
        with contextlib.ExitStack() as inner:
            cluster, endpoint = _cluster(root, base, inner)
            wrk.run_script(endpoint, varied(), 3, connections)  # every model loaded and warm
            pids = {f"{role} {i}" if role == "worker" else role: p.pid for i, (role, p) in enumerate(cluster.procs)}
            rows.append(row("cluster (affinity up defaults)", endpoint, varied(), pids))
            wrk.run_script(endpoint, one(), 2, connections)
            rows.append(row("cluster, one model", endpoint, one()))
            if rate > 0:
                rows.append(("cluster, open loop", None, _open_loop(endpoint, rate, duration, names, out), None))

        # The same cluster with the balancer packing JSON requests into the binary extension
        # for the hop (the default forwards them as they came): what the binary hop pays.
        with contextlib.ExitStack() as inner:
            cluster, endpoint = _cluster(root, replace(base, balancer_args=("--upstream-encoding", "binary")), inner)
            wrk.run_script(endpoint, varied(), 3, connections)
            rows.append(row("cluster, binary to the workers (--upstream-encoding binary)", endpoint, varied()))

        # Each worker's budget holds half the models (and a little): together the workers hold
        # every model only if each model stays on one worker, which is what affinity does.
        half = Amount(bytes=(MODELS // 2) * PER_MODEL + PER_MODEL // 2)
        with contextlib.ExitStack() as inner:
            options = UpOptions(workers=workers, models=root, port=0, grpc_port=0, log_level="WARNING", cpu_memory=half)
            cluster, endpoint = _cluster(root, options, inner)
            wrk.run_script(endpoint, varied(), 3, connections)
            label = f"cluster, each worker's budget {format_size(half.bytes)} (half the models)"
            rows.append(row(label, endpoint, varied()))

        # The same twelve models with their owner's INT8 opt-in: a quarter of the bytes a pass.
        int8 = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="affinity-bench-int8-")))
        make_models(int8, quantize="int8")
        with contextlib.ExitStack() as inner:
            cluster, endpoint = _cluster(int8, replace(base, models=int8), inner)
            wrk.run_script(endpoint, varied(), 3, connections)
            rows.append(row('cluster, INT8 weights (the models\' "quantize": "int8")', endpoint, varied()))

        port = free_port()
        args = ["worker", "--models", str(root), "--port", str(port), "--grpc-port", "0", "--log-level", "WARNING"]
        proc = spawn(affinity_command(*args))
        stack.callback(stop_all, [proc])
        direct = f"http://127.0.0.1:{port}"
        wait_ready(direct + "/v2/health/ready", proc)
        wrk.run_script(direct, varied(), 3, connections)
        result = wrk.run_script(direct, varied(), duration, connections)
        rows.append(("direct -> worker (all models)", result, "", None))
    text = _table(rows, budgets, duration, connections)
    title = f"{MODELS} MLPs 3x{WIDTH}, every input different: wrk, {connections} connections"
    results = {label: result for label, result, _, _ in rows}
    for written in wrk_outputs(out, "throughput", title, results, text, ("direct -> worker (all models)",)):
        print(f"wrote {written}")
    print(text)
    return 0


def _open_loop(endpoint: str, rate: float, duration: float, names: list[str], out: Path) -> str:
    from loadgen.config import LoadConfig
    from loadgen.runner import run_once

    config = LoadConfig(
        url=endpoint, rate=rate, duration=duration, warmup=2.0, models=tuple(names), max_outstanding=256,
        out=out / "open-loop",
    )  # fmt: skip
    report, _ = run_once(config, title=f"open loop {rate:g}/s")
    c = report.counts
    return (
        f"offered {report.offered_rps:,.0f}/s, achieved {report.achieved_rps:,.0f}/s, "
        f"p50 {report.latency_ms.p50:.2f} ms, p99 {report.latency_ms.p99:.2f} ms, "
        f"errors {c.errors}, dropped {c.dropped}"
    )


def _table(rows: list[Row], budgets: dict[str, float], duration: float, connections: int) -> str:
    lines = [
        f"`affinity bench throughput` on {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}: {MODELS} MLPs 3x{WIDTH}, JSON, every input different, a model at random, "
        f"wrk -t1 -c{connections} -d{duration:g}s",
        "",
        "| row | req/s | p50 ms | p99 ms | errors | answered without a worker |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, result, note, shortcut in rows:
        if result is None:
            lines.append(f"| {label} | {note} | | | | |")
        else:
            lines.append(
                f"| {label} | {result.requests_per_second:,.0f} | {result.p50_seconds * 1e3:.2f} | "
                f"{result.p99_seconds * 1e3:.2f} | {result.errors} | {'-' if shortcut is None else shortcut} |"
            )
    if budgets:
        lines += ["", "CPU per request on the cluster row (all the process's threads):", ""]
        lines += [f"- {role}: {us:.0f} us" for role, us in budgets.items()]
        lines.append(f"- in all: {sum(budgets.values()):.0f} us for {os.cpu_count()} cores")
    return "\n".join(lines)
