"""Sweep mode: the same run at rising offered rates, and where it breaks.

The knee is the first rate at which the target no longer keeps up: it answers
less than ``achieved_floor`` of what was offered (successfully), or its p99
rises past ``p99_factor`` times the lowest p99 seen at the lower rates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from rich.console import Console

from loadgen.config import LoadConfig
from loadgen.plots import plot_sweep
from loadgen.progress import summary_table
from loadgen.report import Report
from loadgen.runner import find_target, run_once

ACHIEVED_FLOOR = 0.95
P99_FACTOR = 3.0


@dataclass(frozen=True, slots=True)
class Knee:
    rate: float  # first offered rate past the knee
    last_good: float | None  # highest rate before it (None: even the lowest was past it)
    reason: str


def find_knee(
    offered: Sequence[float],
    achieved: Sequence[float],
    p99: Sequence[float],
    achieved_floor: float = ACHIEVED_FLOOR,
    p99_factor: float = P99_FACTOR,
) -> Knee | None:
    """Points in rising order of offered rate; None when every rate was kept up."""
    for i, rate in enumerate(offered):
        last_good = offered[i - 1] if i else None
        if achieved[i] < achieved_floor * rate:
            return Knee(rate, last_good, f"achieved {achieved[i]:.0f}/s of {rate:g}/s offered")
        baseline = min(p99[:i], default=None)
        if baseline is not None and baseline > 0 and p99[i] > p99_factor * baseline:
            return Knee(rate, last_good, f"p99 {p99[i]:.2f} ms is over {p99_factor:g}x the lowest ({baseline:.2f} ms)")
    return None


def parse_rates(text: str) -> list[float]:
    try:
        rates = sorted({float(r) for r in text.split(",") if r.strip()})
    except ValueError:
        raise ValueError(f"--sweep takes comma-separated rates, such as 100,200,400 (not {text!r})") from None
    if not rates or rates[0] <= 0:
        raise ValueError("--sweep needs positive rates")
    return rates


def run_sweep(config: LoadConfig, rates: Sequence[float], console: Console) -> tuple[list[Report], Knee | None]:
    if config.closed_loop:
        raise ValueError("--sweep varies the open-loop rate: leave out --concurrency")
    target = find_target(config)
    reports: list[Report] = []
    for i, rate in enumerate(rates):
        out = None if config.out is None else config.out / f"rate-{rate:g}"
        # bodies of their own at each rate: a point must not hit the cache on an earlier point's answers
        one = dataclasses.replace(config, rate=rate, out=out, seed=config.derived_seed(i))
        report, _ = run_once(one, target, title=f"{rate:g}/s")
        reports.append(report)
    knee = find_knee(rates, [r.achieved_rps for r in reports], [r.latency_ms.p99 for r in reports])
    console.print(summary_table([f"{r:g}/s" for r in rates], reports, "affinity loadgen sweep"))
    console.print(f"knee: {knee.rate:g}/s ({knee.reason})" if knee else "no knee: every rate was kept up")
    if config.out is not None:
        _write(config.out, rates, reports, knee)
        console.print(f"wrote {config.out / 'sweep.json'}, {config.out / 'sweep.png'}")
    return reports, knee


def _write(out: Path, rates: Sequence[float], reports: Sequence[Report], knee: Knee | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "knee": None if knee is None else dataclasses.asdict(knee),
        "points": [
            {
                "offered_rate": rate,
                "achieved_rps": r.achieved_rps,
                "p50_ms": r.latency_ms.p50,
                "p99_ms": r.latency_ms.p99,
                "p99.9_ms": r.latency_ms.p999,
                "errors": r.counts.errors,
                "dropped": r.counts.dropped,
                "report": f"rate-{rate:g}/report.json",
            }
            for rate, r in zip(rates, reports, strict=True)
        ],
    }
    (out / "sweep.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    plot_sweep(rates, reports, None if knee is None else knee.rate, out / "sweep.png")
