"""Session fixtures: a small real zoo, a private redis-server, real worker and
balancer processes. Each fixture stops what it started, even when tests fail."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.harness import RedisServer, Server, private_cluster, start_balancer, start_worker, stop_all
from worker.zoo import make_identities, make_model, make_zoo

ZOO_MODELS = ("mlp-00", "cnn-01", "transformer-02", "logreg-03")


def pytest_report_header() -> str:
    return f"redis for tests: {RedisServer.kind()}"


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model per architecture, 64 KiB to 512 KiB of random weights, plus a
    model whose weights file is not safetensors at all and a non-deterministic
    copy of the MLP."""
    root = tmp_path_factory.mktemp("zoo")
    make_zoo(root, count=4, min_size=64 << 10, max_size=512 << 10)
    broken = root / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "config.json").write_bytes((root / "mlp-00" / "1" / "config.json").read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x80\x04this is not a safetensors file")
    # The same MLP, declared non-deterministic: its answers are never cached.
    nondet = root / "mlp-nondet" / "1"
    nondet.mkdir(parents=True)
    config = orjson.loads((root / "mlp-00" / "1" / "config.json").read_bytes())
    (nondet / "config.json").write_bytes(orjson.dumps({**config, "deterministic": False}))
    (nondet / "model.safetensors").write_bytes((root / "mlp-00" / "1" / "model.safetensors").read_bytes())
    return root


@pytest.fixture(scope="session")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def redis_server(logdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(logdir).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def workers(zoo: Path, logdir: Path) -> Iterator[list[Server]]:
    started = [start_worker(zoo, logdir) for _ in range(2)]
    try:
        for w in started:
            w.wait_ready()
        yield started
    finally:
        stop_all(w.proc for w in started)


@pytest.fixture(scope="session")
def balancer(workers: list[Server], logdir: Path) -> Iterator[Server]:
    """A balancer with the embedded (in-process) cache, pure consistent routing."""
    server = start_balancer(workers, logdir, "--policy", "consistent")
    try:
        yield server.wait_ready()
    finally:
        server.proc.stop()


@pytest.fixture(scope="session")
def redis_balancers(workers: list[Server], redis_server: RedisServer, logdir: Path) -> Iterator[list[Server]]:
    """Two balancers sharing the private Redis as their cache layer."""
    started = [start_balancer(workers, logdir, "--redis-url", redis_server.url) for _ in range(2)]
    try:
        yield [s.wait_ready() for s in started]
    finally:
        stop_all(s.proc for s in started)


@pytest.fixture(scope="session")
def wire_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every demo architecture, one identity model per V2 datatype, and a wide one
    (its requests take the large-body paths)."""
    root = tmp_path_factory.mktemp("wire-zoo")
    make_zoo(root, count=4, min_size=64 << 10, max_size=512 << 10)
    make_identities(root)
    make_model(root, "identity-wide", "identity", {"datatype": "FP32", "width": 100_000}, 0)  # 400 KB a row
    return root


@pytest.fixture(scope="session")
def wire_cluster(wire_zoo: Path, logdir: Path) -> Iterator[tuple[list[Server], Server]]:
    """Two workers (REST and gRPC each) behind a balancer with both fronts, pure ring."""
    with private_cluster(wire_zoo, logdir, 2, "--policy", "consistent") as cluster:
        yield cluster
