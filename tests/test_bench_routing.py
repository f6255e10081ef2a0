"""``affinity bench routing`` end to end, briefly: real workers, a balancer and
the load generator, with loads from a remote store (``--source remote``), where
each worker has only the store and a disk cache of its own."""

from __future__ import annotations

from pathlib import Path

import orjson

from cli.bench.routing import run_routing
from worker.zoo import make_zoo


def test_routing_bench_with_loads_from_a_remote_store(tmp_path: Path) -> None:
    models = tmp_path / "zoo"
    make_zoo(models, count=4, min_size=64 << 10, max_size=256 << 10)
    out = tmp_path / "out"
    code = run_routing(
        duration=2, warmup=0, rate=20, skew_rate=20, workers=2, policies=("affinity",), models=models,
        zoo_count=4, out=out, seed=1, scenarios=("zipf",), source="remote",
    )  # fmt: skip
    assert code == 0
    [row] = orjson.loads((out / "routing.json").read_bytes())
    assert row["errors"] == 0 and row["dropped"] == 0 and row["throughput"] > 0
    report = orjson.loads((out / "zipf" / "affinity" / "report.json").read_bytes())
    # A cold cluster with no repository: every model's first answer came from the store.
    assert report["model_source"].get("remote", 0) >= 1
    assert report["model_loads"] >= report["model_source"]["remote"]
    assert "loads from a file:// remote store" in (out / "routing.md").read_text()
