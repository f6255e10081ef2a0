"""What every scenario leaves under its ``--out`` directory: ``NAME.md`` (the
table it printed, the rows docs/benchmarks.md keeps), ``NAME.json`` (the same
rows as data) and its charts (``cli.bench.charts``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from loadgen.wrk import WrkResult


def write_table(out: Path, name: str, text: str, data: Any) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    table, rows = out / f"{name}.md", out / f"{name}.json"
    table.write_text(text + "\n")
    rows.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    return [table, rows]


def wrk_outputs(
    out: Path,
    name: str,
    title: str,
    results: Mapping[str, WrkResult | None],
    text: str,
    references: Sequence[str] = (),
) -> list[Path]:
    """A wrk scenario's table, rows and one bar per row (req/s, its p99 beside it)."""
    from cli.bench.charts import bars

    measured = {label: r for label, r in results.items() if r is not None}
    written = write_table(out, name, text, {label: asdict(r) for label, r in measured.items()})
    rows = [(label, r.requests_per_second) for label, r in measured.items()]
    notes = {label: f"p99 {r.p99_seconds * 1e3:.1f} ms" for label, r in measured.items()}
    written.append(bars(out / f"{name}.png", title, rows, "requests per second", references, notes=notes))
    return written
