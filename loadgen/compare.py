"""Compare mode: several runs' reports in one table and one plot (their CDFs)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from loadgen.plots import plot_compare
from loadgen.progress import summary_table
from loadgen.report import Report
from loadgen.runner import REPORT


def report_path(path: Path) -> Path:
    """A report file, or a run's directory holding one."""
    return path / REPORT if path.is_dir() else path


def labels_for(paths: Sequence[Path]) -> list[str]:
    """Short names: the run directory's name, made unique with its parent's."""
    names = [report_path(p).parent.name or str(p) for p in paths]
    return [
        f"{report_path(p).parent.parent.name}/{name}" if names.count(name) > 1 else name
        for p, name in zip(paths, names, strict=True)
    ]


def compare(paths: Sequence[Path], out: Path | None, console: Console) -> list[Report]:
    if len(paths) < 1:
        raise ValueError("--compare needs at least one report.json (or run directory)")
    reports = []
    for path in paths:
        file = report_path(path)
        if not file.is_file():
            raise ValueError(f"no report at {file}")
        try:
            reports.append(Report.read(file))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{file} is not a loadgen report ({type(exc).__name__}: {exc})") from None
    labels = labels_for(paths)
    console.print(summary_table(labels, reports, "affinity loadgen compare"))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        plot = plot_compare(labels, reports, out / "compare.png")
        console.print(f"wrote {plot}")
    return reports
