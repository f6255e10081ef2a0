"""The benchmarks' own charts: bars for a table's rows, grouped bars for a
scenario by policy, curves against offered load, lines over time, CDFs of
latency samples. matplotlib's object API (``Figure``, no pyplot), as in
``loadgen.plots``: no global state, no display, PNG through the Agg canvas.

Each function takes plain numbers (the caller's table), draws one PNG and
returns its path; none reads or runs anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from loadgen.plots import plain_log_ticks

DPI = 110
MUTED = "#9a9a9a"  # reference rows (nginx, a bare Redis GET, the copy floor)
MAIN = "#3b75af"


def bars(
    path: Path,
    title: str,
    rows: Sequence[tuple[str, float]],
    xlabel: str,
    references: Sequence[str] = (),
    log: bool = False,
    notes: Mapping[str, str] | None = None,
) -> Path:
    """One horizontal bar per row, top to bottom in the table's order, its
    value written at its end; rows named in ``references`` in grey."""
    fig = Figure(figsize=(9, 0.5 * len(rows) + 1.6), dpi=DPI)
    ax: Axes = fig.subplots()
    labels = [label for label, _ in rows]
    values = [value for _, value in rows]
    colours = [MUTED if label in references else MAIN for label in labels]
    positions = list(range(len(rows)))[::-1]
    ax.barh(positions, values, color=colours)
    ax.set_yticks(positions, labels)
    if log:
        ax.set_xscale("log")
        plain_log_ticks(ax, "x")
    top = max(values, default=1.0)
    for y, label, value in zip(positions, labels, values, strict=True):
        text = f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"
        if notes and label in notes:
            text += f"  {notes[label]}"
        ax.annotate(text, (value, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    if not log:
        ax.set_xlim(0, top * 1.35)
    ax.set_xlabel(xlabel)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    return path


def grouped_bars(
    path: Path,
    title: str,
    panels: Sequence[tuple[str, str, Mapping[str, Mapping[str, float]], bool]],
) -> Path:
    """Side-by-side panels; each is (title, y label, {group: {series: value}},
    log scale), groups along the x axis and one bar per series in each."""
    fig = Figure(figsize=(5.2 * len(panels), 4.6), dpi=DPI)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel_title, ylabel, groups, log) in zip(axes, panels, strict=True):
        names = list(groups)
        series = list(dict.fromkeys(s for values in groups.values() for s in values))
        width = 0.8 / max(len(series), 1)
        for i, name in enumerate(series):
            xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(names))]
            ys = [groups[group].get(name, 0.0) for group in names]
            ax.bar(xs, ys, width, label=name)
        ax.set_xticks(range(len(names)), names)
        if log:
            ax.set_yscale("log")
            plain_log_ticks(ax, "y")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    return path


def curves(
    path: Path,
    title: str,
    panels: Sequence[tuple[str, str, Mapping[str, Sequence[tuple[float, float]]], bool]],
    xlabel: str,
    columns: int = 2,
    diagonal: bool = False,
) -> Path:
    """Panels of (title, y label, {series: [(x, y)]}, log y) in a grid of
    ``columns``; ``diagonal`` draws y = x (achieved against offered)."""
    rows = (len(panels) + columns - 1) // columns
    fig = Figure(figsize=(5.2 * columns, 4.0 * rows), dpi=DPI)
    grid = fig.subplots(rows, columns, squeeze=False)
    flat = [ax for row in grid for ax in row]
    for ax, (panel_title, ylabel, series, log) in zip(flat, panels, strict=False):
        for name, points in series.items():
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", label=name)
        if diagonal:
            top = max((x for points in series.values() for x, _ in points), default=1.0)
            ax.plot([0, top], [0, top], linestyle=":", color=MUTED, label="achieved = offered")
        ax.set_xscale("log")
        plain_log_ticks(ax, "x")
        if log:
            ax.set_yscale("log")
            plain_log_ticks(ax, "y")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    return path


def over_time(
    path: Path, title: str, series: Mapping[str, Sequence[tuple[float, float]]], ylabel: str, marks: Sequence[float]
) -> Path:
    """Lines against seconds; ``marks`` are vertical lines (a window's edges)."""
    fig = Figure(figsize=(9, 4.8), dpi=DPI)
    ax: Axes = fig.subplots()
    for name, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, label=name)
    for x in marks:
        ax.axvline(x, linestyle="--", color=MUTED)
    ax.set_xlabel("seconds from the end of the warm-up")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return path


def cdfs(path: Path, title: str, samples: Mapping[str, Sequence[float]], xlabel: str) -> Path:
    """Empirical CDFs of latency samples (milliseconds), log x."""
    fig = Figure(figsize=(8, 4.8), dpi=DPI)
    ax: Axes = fig.subplots()
    for name, values in samples.items():
        ordered = sorted(values)
        if ordered:
            n = len(ordered)
            ax.plot(ordered, [(i + 1) / n for i in range(n)], drawstyle="steps-post", label=name)
    ax.set_xscale("log")
    plain_log_ticks(ax, "x")
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of requests at or below")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return path
