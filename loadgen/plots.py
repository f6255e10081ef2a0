"""PNG plots of reports, drawn with matplotlib's object API (``Figure``, no
pyplot): no global figure state and no display backend, only the Agg canvas
that ``savefig`` uses for PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from loadgen.report import Report

DPI = 110


def _tick(value: float, _: object) -> str:
    """1, 2 and 5 times a power of ten, written plainly; the other minor ticks unlabelled."""
    if value <= 0:
        return ""
    lead = value / 10 ** math.floor(math.log10(value))
    return f"{value:g}" if round(lead, 6) in (1.0, 2.0, 5.0) else ""


def plain_log_ticks(ax: Axes, axis: str) -> None:
    """Log-scale ticks as 2, 5, 20 rather than 2x10^0, and only those (no crowding)."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    plain = FuncFormatter(_tick)
    target.set_major_formatter(plain)
    target.set_minor_formatter(plain)


def _cdf_axes(fig: Figure, title: str) -> Axes:
    ax: Axes = fig.subplots()
    ax.set_xscale("log")
    plain_log_ticks(ax, "x")
    ax.set_xlabel("latency from scheduled send (ms, log scale)")
    ax.set_ylabel("fraction of requests at or below")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    return ax


def plot_cdf(report: Report, path: Path) -> Path:
    fig = Figure(figsize=(7, 4.5), dpi=DPI)
    ax = _cdf_axes(fig, f"Latency CDF: {_label(report)}")
    if report.latency_cdf:
        xs, ys = zip(*report.latency_cdf, strict=True)
        ax.plot(xs, ys, drawstyle="steps-post")
        for name, value in (("p50", report.latency_ms.p50), ("p99", report.latency_ms.p99)):
            ax.axvline(value, linestyle=":", color="grey")
            ax.annotate(name, (value, 0.02), rotation=90, color="grey")
    fig.savefig(path)
    return path


def plot_over_time(report: Report, path: Path) -> Path:
    fig = Figure(figsize=(8, 6), dpi=DPI)
    top, bottom = fig.subplots(2, 1, sharex=True)
    seconds = [row.second for row in report.series]
    for attr, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
        top.plot(seconds, [getattr(row, attr) for row in report.series], marker=".", label=label)
    top.set_ylabel("latency (ms), by scheduled second")
    top.set_yscale("log")
    plain_log_ticks(top, "y")
    top.grid(True, which="both", alpha=0.3)
    top.legend(loc="best")
    top.set_title(f"Over time: {_label(report)}")
    for attr, label in (
        ("offered", "offered"),
        ("completed", "answered"),
        ("errors", "errors"),
        ("dropped", "dropped"),
    ):
        bottom.plot(seconds, [getattr(row, attr) for row in report.series], marker=".", label=label)
    bottom.set_ylabel("requests per second")
    bottom.set_xlabel("second of the measured window")
    bottom.grid(True, alpha=0.3)
    bottom.legend(loc="best")
    fig.savefig(path)
    return path


def plot_sweep(offered: Sequence[float], reports: Sequence[Report], knee: float | None, path: Path) -> Path:
    fig = Figure(figsize=(8, 5), dpi=DPI)
    ax = fig.subplots()
    for attr, label in (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")):
        ax.plot(offered, [getattr(r.latency_ms, attr) for r in reports], marker="o", label=label)
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_yscale("log")
    plain_log_ticks(ax, "y")
    ax.grid(True, which="both", alpha=0.3)
    right = ax.twinx()
    right.plot(offered, [r.achieved_rps for r in reports], color="black", linestyle="--", marker="x", label="achieved")
    right.plot(offered, offered, color="grey", linestyle=":", label="offered = achieved")
    right.set_ylabel("achieved (successful answers/s)")
    if knee is not None:
        ax.axvline(knee, color="red", linestyle="--", label=f"knee {knee:g}/s")
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left")
    ax.set_title("Latency against offered load")
    fig.savefig(path)
    return path


def plot_compare(labels: Sequence[str], reports: Sequence[Report], path: Path, title: str = "Latency CDFs") -> Path:
    fig = Figure(figsize=(8, 5), dpi=DPI)
    ax = _cdf_axes(fig, title)
    for label, report in zip(labels, reports, strict=True):
        if report.latency_cdf:
            xs, ys = zip(*report.latency_cdf, strict=True)
            ax.plot(xs, ys, drawstyle="steps-post", label=label)
    ax.legend(loc="lower right")
    fig.savefig(path)
    return path


def _label(report: Report) -> str:
    config = report.config
    if config.get("mode") == "closed":
        return f"closed loop, {config['concurrency']} clients, {config['protocol']}"
    return f"{config['arrivals']} {config['rate']:g}/s, {config['protocol']}"
