"""One load run from start to files: ask the target, generate, report, plot."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from loadgen.config import LoadConfig
from loadgen.plots import plot_cdf, plot_over_time
from loadgen.processes import run_async, run_here, run_processes
from loadgen.progress import ProgressView
from loadgen.report import Report, build_report
from loadgen.target import Target, discover

REPORT = "report.json"
CDF_PLOT = "latency_cdf.png"
TIME_PLOT = "over_time.png"


def find_target(config: LoadConfig) -> Target:
    return run_async(discover(config.url, config.models))


def run_once(
    config: LoadConfig, target: Target | None = None, console: Console | None = None, title: str = "measuring"
) -> tuple[Report, list[Path]]:
    """Run ``config`` against the target and write its report and plots to
    ``config.out`` (when set); returns the report and the files written."""
    if target is None:
        target = find_target(config)
    run = run_here if config.processes == 1 else run_processes
    with ProgressView(config.warmup + config.duration, title, console) as view:
        stats = run(config, target, view.update)
    report = build_report(config, target, stats)
    files: list[Path] = []
    if config.out is not None:
        config.out.mkdir(parents=True, exist_ok=True)
        report.write(config.out / REPORT)
        files = [
            config.out / REPORT,
            plot_cdf(report, config.out / CDF_PLOT),
            plot_over_time(report, config.out / TIME_PLOT),
        ]
    return report, files
