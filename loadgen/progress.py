"""What the terminal shows: a live line while a run goes (rich), a summary after.

The live line goes to stderr, so stdout carries only the summary table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from loadgen.engine import Snapshot
from loadgen.report import Report


def live_text(s: Snapshot) -> str:
    return (
        f"{s.rate:8.0f} req/s  p50 {s.p50 * 1e3:7.2f} ms  p99 {s.p99 * 1e3:7.2f} ms  "
        f"ok {s.ok}  [red]errors {s.errors}[/]  [yellow]dropped {s.dropped}[/]  in flight {s.outstanding}"
    )


class ProgressView:
    """A progress bar over the run's time with the live figures beside it."""

    def __init__(self, total: float, title: str, console: Console | None = None) -> None:
        self.total = total
        self.title = title
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=20),
            TextColumn("{task.completed:5.1f}/{task.total:.0f}s"),
            TextColumn("{task.fields[live]}"),
            console=console or Console(stderr=True),
            refresh_per_second=4,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> ProgressView:
        self.progress.start()
        self.task = self.progress.add_task(self.title, total=self.total, live="starting")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.stop()

    def update(self, snapshot: Snapshot) -> None:
        if self.task is None:
            return
        phase = "warm-up" if snapshot.warming else self.title
        self.progress.update(
            self.task,
            completed=min(snapshot.elapsed, self.total),
            description=phase,
            live=live_text(snapshot),
        )


def summary_table(labels: Sequence[str], reports: Sequence[Report], title: str) -> Table:
    table = Table(title=title)
    for name in ("run", "offered/s", "achieved/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"):
        table.add_column(name, justify="left" if name == "run" else "right")
    for name in ("errors", "dropped", "hit ratio", "loads", "gen us/req"):
        table.add_column(name, justify="right")
    for label, r in zip(labels, reports, strict=True):
        lat = r.latency_ms
        table.add_row(
            label,
            f"{r.offered_rps:,.0f}",
            f"{r.achieved_rps:,.0f}",
            *(f"{v:,.2f}" for v in (lat.p50, lat.p90, lat.p99, lat.p999, lat.max)),
            str(r.counts.errors),
            str(r.counts.dropped),
            f"{r.cache.hit_ratio:.2f}",
            str(r.model_loads),
            f"{r.generator.cpu_per_request_us:,.0f}",
        )
    return table


def print_summary(console: Console, report: Report, files: Sequence[Path]) -> None:
    c = report.counts
    console.print(summary_table(["this run"], [report], "affinity loadgen"))
    console.print(f"offered {c.offered} = ok {c.ok} + errors {c.errors} + dropped {c.dropped}")
    if report.errors_by_kind:
        console.print("errors: " + ", ".join(f"{k} {v}" for k, v in report.errors_by_kind.items()))
    if report.served_by:
        console.print("served by: " + ", ".join(f"{k} {v}" for k, v in report.served_by.items()))
    g = report.generator
    lag = report.send_lag_ms
    console.print(
        f"generator: {g.processes} process(es), {g.cpu_per_request_us:.0f} us CPU/request, "
        f"busy {g.busy:.0%}, send lag p99 {lag.p99:.2f} ms, max {lag.max:.2f} ms"
    )
    for path in files:
        console.print(f"wrote {path}")
