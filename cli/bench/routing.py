"""``affinity bench routing``: the routing policies side by side, on one cluster
whose memory budgets hold about half of the models.

For each scenario and policy, a fresh cluster (same zoo, same budgets, cold
memory) and one open-loop run of ``affinity loadgen`` (Poisson arrivals, the
same seed for every policy, so every policy gets the same requests):

    zipf   ``--popularity zipf:1.1`` over the whole zoo: the usual long tail
    skew   ``--popularity zipf:3``: one model takes ~80% of the traffic

Reported per row: p50 and p99 latency (from scheduled send times), throughput
(answers a second) and model loads per 1,000 requests (answers whose
``X-Model-Source`` was not ``cpu``/``gpu``). Ratios are taken within the run:
the machine is shared and noisy.

Memory budgets: each worker gets ``--cpu-memory`` = half the zoo's bytes. No worker can hold every model,
so a worker that sees every model (round-robin, least-loaded) keeps paging
them in and out; the cluster's memory together (1.5x the zoo with three
workers) holds every model once when each model stays on its owners, which is
what affinity is for.

Where a load comes from (``--source``): ``repository`` (default) pages from
the zoo's directory, so a load reads the page cache; ``remote`` publishes the
zoo to a ``file://`` remote store and gives each worker only the store and a
local disk cache of its own, also half the zoo (``--disk-cache``), so a model
that left both tiers is fetched again (copied and its sha256 checked), as a
worker that pages from S3 with a bounded disk does, minus the network.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import platform
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path

import orjson

from common.process import affinity_command, free_port, spawn, stop, wait_ready

SCENARIOS = {"zipf": "zipf:1.1", "skew": "zipf:3"}
POPULARITY_NOTE = {"zipf": "Zipf 1.1", "skew": "Zipf 3"}
DEFAULT_POLICIES = ("affinity", "round-robin", "consistent", "least-loaded")


@dataclass(frozen=True, slots=True)
class Row:
    scenario: str
    policy: str
    p50_ms: float
    p99_ms: float
    throughput: float
    loads_per_1000: float
    errors: int
    dropped: int
    spills_per_1000: float = 0.0  # the balancer's spill decisions to a worker without the model
    resident_spills_per_1000: float = 0.0  # ... and to one that held it


def zoo_bytes(models: Path) -> int:
    return sum(p.stat().st_size for p in models.glob("*/*/model.safetensors"))


class BenchCluster:
    """Workers and one balancer as child processes, logs in ``logdir``."""

    def __init__(
        self,
        models: Path,
        workers: int,
        budget: int,
        policy: str,
        logdir: Path,
        balancer_args: tuple[str, ...] = (),
        store: str | None = None,
        disk_root: Path | None = None,
    ) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[object] = []
        threads = max(1, (os.cpu_count() or 1) // workers)
        urls = []
        for i in range(workers):
            port = free_port()
            args = ["worker", "--port", str(port), "--grpc-port", "0"]
            args += ["--threads", str(threads), "--cpu-memory", str(budget), "--log-level", "WARNING"]
            if store is None:
                args += ["--models", str(models)]
            else:  # the store alone, and a disk cache of this worker's own as small as its memory
                disk = (disk_root or logdir) / f"{policy}-disk-{i}"
                args += ["--remote-store", store, "--disk-cache-dir", str(disk), "--disk-cache", str(budget)]
            urls.append(f"http://127.0.0.1:{port}")
            self._spawn(args, logdir / f"{policy}-worker-{i}.log")
        for url, proc in zip(urls, self.procs, strict=True):
            wait_ready(url + "/v2/health/ready", proc)
        port = free_port()
        args = ["balancer", "--workers", ",".join(urls), "--port", str(port), "--grpc-port", "0", "--policy", policy]
        args += ["--log-level", "WARNING", *balancer_args]
        balancer = self._spawn(args, logdir / f"{policy}-balancer.log")
        self.url = f"http://127.0.0.1:{port}"
        wait_ready(self.url + "/v2/health/ready", balancer)

    def _spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        out = log.open("wb")
        self.logs.append(out)
        proc = spawn(affinity_command(*args), output=out)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        stop(reversed(self.procs))
        for out in self.logs:
            out.close()  # type: ignore[attr-defined]


def load_run(url: str, popularity: str, rate: float, duration: float, warmup: float, seed: int, out: Path) -> Row:
    args = ["loadgen", "--url", url, "--rate", f"{rate:g}", "--duration", f"{duration:g}", "--warmup", f"{warmup:g}"]
    args += ["--popularity", popularity, "--seed", str(seed), "--timeout", "30", "--out", str(out)]
    subprocess.run(affinity_command(*args), check=True, stdout=subprocess.DEVNULL, timeout=duration + warmup + 120)
    report = orjson.loads((out / "report.json").read_bytes())
    counts = report["counts"]
    answered = counts["ok"] + counts["errors"]
    return Row(
        scenario="",
        policy="",
        p50_ms=report["latency_ms"]["p50"],
        p99_ms=report["latency_ms"]["p99"],
        throughput=report["achieved_rps"],
        loads_per_1000=1000 * report["model_loads"] / max(answered, 1),
        errors=counts["errors"],
        dropped=counts["dropped"],
    )


def run_routing(
    duration: float,
    warmup: float,
    rate: float,
    skew_rate: float,
    workers: int,
    policies: tuple[str, ...],
    models: Path | None,
    zoo_count: int,
    out: Path,
    seed: int,
    balance_factor: float = 0.0,
    cold_spill_slack: int = -1,
    scenarios: tuple[str, ...] = tuple(SCENARIOS),
    source: str = "repository",
) -> int:
    out.mkdir(parents=True, exist_ok=True)
    balancer_args: tuple[str, ...] = ("--balance-factor", f"{balance_factor:g}") if balance_factor > 0 else ()
    if cold_spill_slack >= 0:
        balancer_args += ("--cold-spill-slack", str(cold_spill_slack))
    with contextlib.ExitStack() as stack:
        if models is None:
            from worker.zoo import make_zoo

            models = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="affinity-bench-")))
            make_zoo(models, count=zoo_count, min_size=8 << 20, max_size=32 << 20)
        total = zoo_bytes(models)
        budget = total // 2
        store = None
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="affinity-bench-disk-")))
        if source == "remote":
            from worker.publish import open_writer, publish

            store = (scratch / "store").as_uri()
            publish(models, open_writer(store))
        rows = []
        for scenario in scenarios:
            for policy in policies:
                disk_root = scratch / scenario
                cluster = BenchCluster(models, workers, budget, policy, out, balancer_args, store, disk_root)
                try:
                    scenario_rate = rate if scenario == "zipf" else skew_rate
                    row = load_run(
                        cluster.url, SCENARIOS[scenario], scenario_rate, duration, warmup, seed, out / scenario / policy
                    )
                    row = _with_spills(row, cluster.url)
                finally:
                    cluster.stop()
                rows.append(_named(row, scenario, policy))
                print(
                    f"{scenario:5s} {policy:13s} p99 {row.p99_ms:9.1f} ms  loads/1000 {row.loads_per_1000:7.1f}"
                    f"  spills/1000 {row.spills_per_1000:6.1f} (+{row.resident_spills_per_1000:.1f} resident)",
                    flush=True,
                )
    text = report(
        rows, workers, budget, total, duration, warmup, rate, skew_rate, seed, balance_factor, cold_spill_slack, source
    )
    for path in write_outputs(rows, text, out):
        print(f"wrote {path}")
    print(text)
    return 0


def write_outputs(rows: list[Row], text: str, out: Path) -> list[Path]:
    """routing.md (the table), routing.json (its rows), routing.png (p99 and
    loads per policy, each scenario a group) and, where the runs' reports are
    under ``out``, one latency-CDF plot per scenario with every policy."""
    from dataclasses import asdict

    from cli.bench.charts import grouped_bars
    from cli.bench.outputs import write_table
    from loadgen.plots import plot_compare
    from loadgen.report import Report

    written = write_table(out, "routing", text, [asdict(r) for r in rows])
    scenarios = list(dict.fromkeys(r.scenario for r in rows))

    def by(attr: str) -> dict[str, dict[str, float]]:
        return {s: {r.policy: getattr(r, attr) for r in rows if r.scenario == s} for s in scenarios}

    panels = [
        ("p99 latency (lower is better)", "ms, log scale", by("p99_ms"), True),
        ("model loads (lower is better)", "loads per 1,000 answers", by("loads_per_1000"), False),
    ]
    written.append(grouped_bars(out / "routing.png", "Routing policies on the same requests", panels))
    for scenario in scenarios:
        runs = [(r.policy, out / scenario / r.policy / "report.json") for r in rows if r.scenario == scenario]
        runs = [(policy, path) for policy, path in runs if path.is_file()]
        if runs:
            reports = [Report.read(path) for _, path in runs]
            target = out / f"routing-{scenario}-cdf.png"
            title = f"Latency CDFs, {scenario} ({POPULARITY_NOTE.get(scenario, scenario)}), policies side by side"
            written.append(plot_compare([policy for policy, _ in runs], reports, target, title))
    return written


def _named(row: Row, scenario: str, policy: str) -> Row:
    return replace(row, scenario=scenario, policy=policy)


def metrics_text(url: str) -> str | None:
    """A process's /metrics page (None when it cannot be read)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=5)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _with_spills(row: Row, url: str) -> Row:
    """The row with the balancer's spill decisions per 1,000 answers (warm-up included:
    the counters cover the whole run, as the loads do not; a ratio, not an exact count)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = metrics_text(url) or ""
    decisions: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "affinity_route_decisions":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    decisions[sample.labels["decision"]] = sample.value
    total = sum(decisions.values()) or 1.0
    return replace(
        row,
        spills_per_1000=1000 * decisions.get("spill", 0.0) / total,
        resident_spills_per_1000=1000 * decisions.get("resident_spill", 0.0) / total,
    )


def _ratio(a: float, b: float) -> str:
    if b > 0:
        return f"{a / b:.1f}x"
    return f"all ({a:g} against 0)" if a > 0 else "n/a"


def report(
    rows: list[Row],
    workers: int,
    budget: int,
    total: int,
    duration: float,
    warmup: float,
    rate: float,
    skew_rate: float,
    seed: int,
    balance_factor: float = 0.0,
    cold_spill_slack: int = -1,
    source: str = "repository",
) -> str:
    memory = f"{budget / 2**20:.0f} MiB each"
    if source == "remote":
        memory += ", loads from a file:// remote store through a disk cache of as much"
    factor = f", --balance-factor {balance_factor:g}" if balance_factor > 0 else ""
    factor += f", --cold-spill-slack {cold_spill_slack}" if cold_spill_slack >= 0 else ""
    lines = [
        f"`affinity bench routing` on {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}: {workers} workers, zoo {total / 2**20:.0f} MiB, budgets {memory}; "
        f"open loop, Poisson, {duration:g} s measured after {warmup:g} s warm-up, seed {seed}; "
        f"zipf at {rate:g} req/s, skew at {skew_rate:g} req/s{factor}",
        "",
        "| scenario | policy | p50 ms | p99 ms | answers/s | loads per 1,000 | spills per 1,000 (cold / resident) "
        "| errors | dropped |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.scenario} | {r.policy} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.throughput:.0f} "
            f"| {r.loads_per_1000:.1f} | {r.spills_per_1000:.1f} / {r.resident_spills_per_1000:.1f} "
            f"| {r.errors} | {r.dropped} |"
        )
    by = {(r.scenario, r.policy): r for r in rows}
    lines += ["", "| goal (same run) | measured | target |", "| --- | ---: | ---: |"]
    aff, rr = by.get(("zipf", "affinity")), by.get(("zipf", "round-robin"))
    if aff and rr:
        lines.append(f"| zipf: round-robin p99 / affinity p99 | {_ratio(rr.p99_ms, aff.p99_ms)} | >= 5x |")
        lines.append(
            f"| zipf: round-robin loads / affinity loads | {_ratio(rr.loads_per_1000, aff.loads_per_1000)} | >= 10x |"
        )
    aff, cons = by.get(("skew", "affinity")), by.get(("skew", "consistent"))
    if aff and cons:
        lines.append(f"| skew: consistent p99 / affinity p99 | {_ratio(cons.p99_ms, aff.p99_ms)} | >= 1x |")
    return "\n".join(lines)
