"""``affinity bench soak``: a long run at 70% of capacity, watching every process's
resident memory (not part of CI).

1. A local cluster (``BenchCluster``: workers and a balancer), a generated zoo
   unless ``--models``; every model fits the workers' budgets, so what grows is
   the processes, not the paging.
2. Capacity: unless ``--rate`` is given, a closed-loop run (``--concurrency``
   clients) measures the answers a second the cluster sustains; the soak runs at
   ``--share`` (0.7) of it.
3. The soak: one open-loop ``affinity loadgen`` run (Poisson, a share of the
   bodies repeated, so the cache both hits and grows) for ``--duration``
   minutes after ``--warmup`` seconds. Every process's RSS (the balancer, its
   key process, each worker) is sampled every ``--sample`` seconds, and with it
   the balancer's cache memory (``affinity_cache_memory_bytes``). The window
   starts at the end of the warm-up or when the cache is full (95% of
   ``--cache-size``), whichever is later: a cache filling up is a bounded
   structure doing its job, and growth after it is the processes' own. Start
   is the first sample in the window, end the last; the report says when the
   window began and whether the cache filled.

Goals (printed with the figures): zero errors, zero dropped, every process's RSS
growing less than 5% from start to end. Exit status 1 when a goal is missed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families

from cli.bench.routing import BenchCluster, metrics_text, zoo_bytes
from common.process import affinity_command

GROWTH_GOAL = 0.05
EDGE_SECONDS = 60.0  # the start, middle and end figures are medians over this long


def rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def descendants(pid: int) -> list[int]:
    """``pid``'s children and theirs (Linux /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def process_name(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    text = " ".join(a.decode(errors="replace") for a in args if a)
    for role in ("balancer", "worker", "key_process"):
        if role in text:
            return role
    return text.split(" ")[-1][:40]


CACHE_FULL = 0.95


def cache_fill(url: str) -> float | None:
    """The balancer's in-process cache, used over capacity (None when it cannot say)."""
    text = metrics_text(url)
    if text is None:
        return None
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "affinity_cache_memory_bytes":
            found = {sample.labels["kind"]: sample.value for sample in family.samples}
    if not found.get("capacity"):
        return None
    return found.get("used", 0.0) / found["capacity"]


@dataclass
class Sampler:
    """RSS of every watched process every ``every`` seconds, on a thread; with
    ``cache_url``, also the moment the balancer's cache first became full."""

    pids: dict[int, str]
    every: float
    cache_url: str | None = None
    samples: list[tuple[float, dict[int, int]]] = field(default_factory=list)
    cache_full_at: float | None = None
    _done: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            taken = {pid: value for pid in self.pids if (value := rss(pid)) is not None}
            now = time.monotonic()
            self.samples.append((now, taken))
            if self.cache_url is not None and self.cache_full_at is None:
                fill = cache_fill(self.cache_url)
                if fill is not None and fill >= CACHE_FULL:
                    self.cache_full_at = now
            if self._done.wait(self.every):
                return

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(10)


def loadgen(args: list[str], out: Path, timeout: float) -> dict[str, object]:
    subprocess.run(
        affinity_command("loadgen", *args, "--out", str(out)), check=True, stdout=subprocess.DEVNULL, timeout=timeout
    )
    report: dict[str, object] = orjson.loads((out / "report.json").read_bytes())
    return report


def run_soak(
    minutes: float,
    rate: float,
    share: float,
    warmup: float,
    workers: int,
    concurrency: int,
    models: Path | None,
    out: Path,
    sample: float,
    cache_size: int = 32 << 20,
) -> int:
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if models is None:
            from worker.zoo import make_zoo

            models = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="affinity-soak-")))
            make_zoo(models, count=8, min_size=1 << 20, max_size=4 << 20)
        budget = zoo_bytes(models) + (64 << 20)  # every model fits each worker
        cluster = BenchCluster(models, workers, budget, "affinity", out, ("--cache-size", str(cache_size)))
        stack.callback(cluster.stop)
        capacity = None
        if rate <= 0:
            print(f"measuring capacity: closed loop, {concurrency} clients, 15 s ...", flush=True)
            args = ["--url", cluster.url, "--concurrency", str(concurrency), "--duration", "15", "--warmup", "5"]
            report = loadgen([*args, "--timeout", "30"], out / "capacity", 120)
            capacity = float(report["achieved_rps"])  # type: ignore[arg-type]
            rate = share * capacity
        seconds = minutes * 60
        pids = {p.pid: "" for p in cluster.procs}
        for p in cluster.procs:
            for child in descendants(p.pid):
                pids[child] = ""
        for pid in pids:
            pids[pid] = process_name(pid)
        print(f"soak: {rate:.0f} req/s for {minutes:g} min after {warmup:g} s warm-up ...", flush=True)
        sampler = Sampler(pids, sample, cluster.url).start()
        try:
            args = ["--url", cluster.url, "--rate", f"{rate:.1f}", "--duration", f"{seconds:g}"]
            args += ["--warmup", f"{warmup:g}", "--repeat", "0.3", "--popularity", "zipf:1.1", "--timeout", "30"]
            report = loadgen(args, out / "soak", seconds + warmup + 300)
        finally:
            sampler.stop()
    measured_from = float(report.get("measured_from", 0.0))  # type: ignore[arg-type]
    starts = max(measured_from, sampler.cache_full_at or 0.0)
    window = [(t, s) for t, s in sampler.samples if t >= starts] or sampler.samples
    rows = rss_growth(window, pids)
    grown = [str(r["process"]) for r in rows if float(r["growth"]) >= GROWTH_GOAL]  # type: ignore[arg-type]
    counts = report["counts"]
    assert isinstance(counts, dict)
    result = {
        "minutes": minutes,
        "rate": rate,
        "capacity": capacity,
        "share": share if capacity is not None else None,
        "counts": counts,
        "errors_by_kind": report["errors_by_kind"],
        "latency_ms": report["latency_ms"],
        "achieved_rps": report["achieved_rps"],
        "cache": report["cache"],
        "rss": rows,
        "window_starts_after_warmup_s": round(window[0][0] - measured_from, 1),
        "window_s": round(window[-1][0] - window[0][0], 1),
        "cache_full_after_warmup_s": (
            None if sampler.cache_full_at is None else round(sampler.cache_full_at - measured_from, 1)
        ),
        "samples": [
            [round(t - measured_from, 1), {f"{pids[p]} {p}": v for p, v in s.items()}] for t, s in sampler.samples
        ],
    }
    (out / "soak.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    text = render(result, workers)
    (out / "soak.md").write_text(text + "\n")
    print(f"wrote {rss_chart(result, out / 'soak-rss.png')}")
    print(text)
    return 1 if counts["errors"] or counts["dropped"] or grown else 0


def rss_growth(
    window: list[tuple[float, dict[int, int]]], pids: dict[int, str], edge: float = EDGE_SECONDS
) -> list[dict[str, object]]:
    """Each process's RSS at the window's start and end, and between them at its middle.

    Each figure is the median of the samples in the window's first ``edge`` seconds,
    its last, and the ``edge`` around its middle (``edge`` at most a quarter of the
    window), not one sample:
    a process that hands freed memory back (``common.heap_trim``) moves up and down by
    megabytes between trims, and one sample at a peak is not growth. ``growth`` (the
    goal) is end over start; ``late_growth`` is end over middle: a leak grows in both
    halves, a bounded structure still filling only in the first.
    """
    if not window:
        return []
    t0, t1 = window[0][0], window[-1][0]
    middle = (t0 + t1) / 2
    edge = min(edge, (t1 - t0) / 4)  # a short window: the start and end figures must not share samples

    def at(pid: int, low: float, high: float) -> float | None:
        values = [taken[pid] for t, taken in window if low <= t <= high and pid in taken]
        return statistics.median(values) if values else None

    rows: list[dict[str, object]] = []
    for pid, name in pids.items():
        start, end = at(pid, t0, t0 + edge), at(pid, t1 - edge, t1)
        mid = at(pid, middle - edge / 2, middle + edge / 2)
        if start and end:
            rows.append(
                {"process": name, "pid": pid, "start": start, "end": end, "growth": (end - start) / start,
                 "middle": mid, "late_growth": (end - mid) / mid if mid else None}
            )  # fmt: skip
    return rows


def rss_chart(result: dict[str, object], path: Path) -> Path:
    """Every process's resident memory over the run (MiB), the measured window's edges dashed."""
    from cli.bench.charts import over_time

    series: dict[str, list[tuple[float, float]]] = {}
    samples = result["samples"]
    assert isinstance(samples, list)
    for second, taken in samples:
        for name, value in taken.items():
            series.setdefault(name, []).append((second, value / 2**20))
    start = float(result["window_starts_after_warmup_s"])  # type: ignore[arg-type]
    marks = (start, start + float(result["window_s"]))  # type: ignore[arg-type]
    title = f"Resident memory during the soak ({result['rate']:.0f} req/s, {result['minutes']:g} min)"
    return over_time(path, title, series, "resident memory (MiB)", marks)


def render(result: dict[str, object], workers: int) -> str:
    counts = result["counts"]
    latency = result["latency_ms"]
    assert isinstance(counts, dict) and isinstance(latency, dict)
    capacity = result["capacity"]
    rate_note = (
        f"{result['rate']:.0f} req/s = {result['share']:g} x the {capacity:.0f} req/s measured closed-loop"
        if capacity is not None
        else f"{result['rate']:.0f} req/s (given)"
    )
    lines = [
        f"`affinity bench soak` on {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}: {workers} workers, {result['minutes']:g} min at {rate_note}",
        "",
        f"sent {counts['sent']}, ok {counts['ok']}, errors {counts['errors']}, dropped {counts['dropped']}; "
        f"p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms, max {latency['max']:.1f} ms",
        "",
        _window_note(result),
        "",
        f"RSS at start, middle and end: medians of the samples in the window's first, middle and last "
        f"{EDGE_SECONDS:g} s; second half: end over middle (a leak grows there too, a structure still "
        "filling does not).",
        "",
        "| process | RSS at start | RSS at end | growth | goal < 5% | second half |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    rows = result["rss"]
    assert isinstance(rows, list)
    for r in rows:
        met = "met" if r["growth"] < GROWTH_GOAL else "missed"
        late = "" if r.get("late_growth") is None else f"{100 * r['late_growth']:+.1f}%"
        lines.append(
            f"| {r['process']} ({r['pid']}) | {r['start'] / 2**20:.1f} MiB | {r['end'] / 2**20:.1f} MiB "
            f"| {100 * r['growth']:+.1f}% | {met} | {late} |"
        )
    return "\n".join(lines)


def _window_note(result: dict[str, object]) -> str:
    full = result["cache_full_after_warmup_s"]
    filled = (
        "the balancer's cache never filled"
        if full is None
        else f"the balancer's cache was full {full:g} s after the warm-up"
        if isinstance(full, float | int) and full > 0
        else "the balancer's cache was full before the warm-up ended"
    )
    return (
        f"RSS window: {result['window_s']:g} s, from {result['window_starts_after_warmup_s']:g} s after the "
        f"warm-up ({filled})."
    )
