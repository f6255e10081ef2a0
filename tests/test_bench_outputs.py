"""What each benchmark leaves under ``--out``: its table, the same rows as
JSON and its charts (real PNGs, drawn from the rows given). The benchmarks
themselves run clusters for minutes; here their writing step runs on rows
shaped like a run's, so a chart that cannot be drawn fails in CI, not in the
middle of a benchmark."""

from __future__ import annotations

import struct
from pathlib import Path

import orjson

from loadgen.clients.base import Reply
from loadgen.config import LoadConfig
from loadgen.report import Report, build_report
from loadgen.stats import RunStats
from loadgen.target import Target
from loadgen.wrk import WrkResult

PNG = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG), f"{path.name} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


def small_report() -> Report:
    """A load generator's report of a few answers, a third of them cache hits."""
    stats = RunStats()
    for i in range(30):
        reply = Reply(200, "hit" if i % 3 == 0 else "miss", "127.0.0.1:9001", "cpu")
        stats.record("m", i / 10, i / 10, i / 10 + 0.001 * (1 + i % 7), reply, "")
    return build_report(LoadConfig(rate=10.0, duration=3.0), Target("http://127.0.0.1:1", ()), stats)


def test_routing_writes_its_table_rows_and_chart(tmp_path: Path) -> None:
    from cli.bench.routing import Row, write_outputs

    rows = [
        Row(scenario, policy, 3.0 + i, 40.0 * (i + 1), 118.0, 2.5 * i, 0, 0)
        for scenario in ("zipf", "skew")
        for i, policy in enumerate(("affinity", "round-robin", "consistent"))
    ]
    for policy in ("affinity", "round-robin"):  # the runs' reports, where the load generator left them
        (tmp_path / "zipf" / policy).mkdir(parents=True)
        small_report().write(tmp_path / "zipf" / policy / "report.json")
    written = write_outputs(rows, "the table", tmp_path)
    names = ["routing.md", "routing.json", "routing.png", "routing-zipf-cdf.png"]  # skew has no reports: no CDFs
    assert [p.name for p in written] == names
    assert (tmp_path / "routing.md").read_text() == "the table\n"
    back = orjson.loads((tmp_path / "routing.json").read_bytes())
    assert [(r["scenario"], r["policy"], r["p99_ms"]) for r in back] == [(r.scenario, r.policy, r.p99_ms) for r in rows]
    width, height = png_size(tmp_path / "routing.png")
    assert width > 800 and height > 300
    png_size(tmp_path / "routing-zipf-cdf.png")


def test_routing_table_shows_spills_and_a_ratio_over_zero_loads() -> None:
    from cli.bench.routing import Row, report

    rows = [
        Row("zipf", "affinity", 17.0, 70.0, 119.0, 0.0, 0, 0, 2.8, 27.9),
        Row("zipf", "round-robin", 21.0, 130.0, 119.0, 197.2, 0, 0, 43.3, 623.3),
    ]
    text = report(rows, 3, 206 << 20, 412 << 20, 15, 15, 120, 160, 1, cold_spill_slack=4)
    assert "| zipf | affinity | 17.0 | 70.0 | 119 | 0.0 | 2.8 / 27.9 | 0 | 0 |" in text
    assert "| zipf: round-robin loads / affinity loads | all (197.2 against 0) | >= 10x |" in text
    assert "| zipf: round-robin p99 / affinity p99 | 1.9x | >= 5x |" in text
    assert "--cold-spill-slack 4" in text


def test_protocols_writes_curves_per_size(tmp_path: Path) -> None:
    from cli.bench.protocols import Row, write_outputs

    rows = [
        Row(size, protocol, rate, rate * 0.98, 1.0, 2.0 + rate / 1000, 0, 0, 60.0)
        for size in ("1 KiB", "1 MiB")
        for protocol in ("rest-json", "rest-binary", "grpc")
        for rate in (100.0, 200.0, 400.0)
    ]
    written = write_outputs(rows, "tables", tmp_path)
    assert {p.name for p in written} == {
        "protocols.md",
        "protocols.json",
        "protocols-throughput.png",
        "protocols-p99.png",
    }
    assert len(orjson.loads((tmp_path / "protocols.json").read_bytes())) == len(rows)
    for name in ("protocols-throughput.png", "protocols-p99.png"):
        width, _ = png_size(tmp_path / name)
        assert width > 1000  # two panels side by side, one per size


def test_wrk_scenarios_chart_every_measured_row(tmp_path: Path) -> None:
    from cli.bench.outputs import wrk_outputs

    results = {
        "nginx proxy -> static": WrkResult(24000.0, 0.0011, 0.004, 240000, 0),
        "balancer, cache hit": WrkResult(21000.0, 0.0013, 0.005, 210000, 0),
        "cluster, open loop": None,  # a row measured by the load generator, not by wrk
    }
    written = wrk_outputs(tmp_path, "overhead", "title", results, "text", ("nginx proxy -> static",))
    assert [p.name for p in written] == ["overhead.md", "overhead.json", "overhead.png"]
    data = orjson.loads((tmp_path / "overhead.json").read_bytes())
    assert set(data) == {"nginx proxy -> static", "balancer, cache hit"}
    assert data["balancer, cache hit"]["requests_per_second"] == 21000.0
    png_size(tmp_path / "overhead.png")


def test_paging_and_soak_charts(tmp_path: Path) -> None:
    from cli.bench.paging import ROW_ORDER, chart
    from cli.bench.soak import rss_chart

    median = {label: 0.001 * (i + 1) ** 2 for i, label in enumerate(ROW_ORDER)}
    png_size(chart(median, {"architecture": "mlp", "bytes": 1 << 30}, tmp_path / "paging.png"))
    samples = [[t, {"balancer 10": 80 << 20, "worker 11": (200 << 20) + t * 1000}] for t in range(0, 60, 5)]
    result = {"samples": samples, "window_starts_after_warmup_s": 5.0, "window_s": 50.0, "rate": 700.0, "minutes": 1}
    png_size(rss_chart(result, tmp_path / "soak-rss.png"))


def test_cache_writes_latency_cdfs_and_the_repeat_comparison(tmp_path: Path) -> None:
    from cli.bench.cache import Row, write_outputs

    report = small_report()
    rows = [Row("hit, in-process", [0.2, 0.25, 0.3]), Row("miss (the model runs)", [1.0, 1.2, 2.0])]
    written = write_outputs(tmp_path, "text", rows, [0.2, 0.3], [0.3, 0.9], [(0.0, report), (0.9, report)])
    assert [p.name for p in written] == ["cache.md", "cache.json", "cache-latency.png", "cache-repeat.png"]
    data = orjson.loads((tmp_path / "cache.json").read_bytes())
    assert data["miss (the model runs)"] == {"p50_ms": 1.2, "p99_ms": 2.0, "samples": 3}
    assert set(data) >= {"small hits, alone", "small hits, large bodies arriving"}
    for name in ("cache-latency.png", "cache-repeat.png"):
        png_size(tmp_path / name)
