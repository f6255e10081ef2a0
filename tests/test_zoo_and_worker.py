"""The demo zoo and the worker's metrics labels (one load per cold model: tests/test_memory_server.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.harness import request, start_worker
from tests.metrics_text import metric_sum
from worker.model_config import ModelConfig
from worker.zoo import make_zoo


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.*"))}


def test_zoo_is_deterministic_from_its_seed(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_zoo(a, count=4, min_size=32 << 10, max_size=256 << 10, seed=7)
    make_zoo(b, count=4, min_size=32 << 10, max_size=256 << 10, seed=7)
    make_zoo(c, count=4, min_size=32 << 10, max_size=256 << 10, seed=8)
    assert _digests(a) == _digests(b)
    assert _digests(a) != _digests(c)


def test_zoo_mixes_architectures_and_sizes(tmp_path: Path) -> None:
    made = make_zoo(tmp_path, count=8, min_size=1 << 20, max_size=8 << 20)
    assert {m.architecture for m in made} == {"mlp", "cnn", "transformer", "logreg"}
    for model in made:
        config = ModelConfig.from_bytes((model.path / "config.json").read_bytes())
        assert config.architecture == model.architecture
    sizes = sorted(m.size_bytes for m in made)
    assert 0.5 * (1 << 20) < sizes[0] < 2 * (1 << 20)
    assert 4 * (1 << 20) < sizes[-1] < 12 * (1 << 20)


def test_zoo_rejects_unknown_architecture(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        make_zoo(tmp_path, count=1, architectures=("gpt-9",))


def test_unknown_model_names_share_one_metrics_label(zoo: Path, logdir: Path) -> None:
    worker = start_worker(zoo, logdir).wait_ready()
    try:
        for i in range(5):
            request(worker.url, "POST", f"/v2/models/made-up-{i}/infer", b"{}")
        metrics = request(worker.url, "GET", "/metrics").body.decode()
        assert "made-up" not in metrics
        assert metric_sum(metrics, "affinity_requests_total", model="unknown", code="404") == 5
    finally:
        worker.proc.stop()
