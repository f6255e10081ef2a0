"""tritonclient (HTTP with binary data, gRPC with raw contents) and KServe's SDK
clients (REST and gRPC), unmodified, against the balancer and a worker: health,
metadata and inference. Each runs in a process of its own (their generated
``inference.*`` messages and ours cannot share one protobuf registry)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import Server

SCRIPT = Path(__file__).parent / "clients" / "official.py"
EXPECTED = [[0.5, -1.25, 3.0, 1e6], [2.0, 0.0, -0.5, 7.5]]
MODEL = "identity-fp32"


def _run(target: Server, which: str) -> dict[str, dict[str, object]]:
    assert target.grpc is not None
    out = subprocess.run(
        [sys.executable, str(SCRIPT), target.url, target.grpc, MODEL, which],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("which", ["triton", "kserve"])
@pytest.mark.parametrize("role", ["balancer", "worker"])
def test_official_clients_work_unmodified(wire_cluster: tuple[list[Server], Server], which: str, role: str) -> None:
    workers, balancer = wire_cluster
    target = balancer if role == "balancer" else workers[0]
    seen = _run(target, which)
    assert len(seen) == 2, seen
    for client, facts in seen.items():
        assert facts["live"] is True and facts["ready"] is True and facts["model_ready"] is True, client
        assert facts["output"] == EXPECTED, client
        assert facts["id"] in ("t1", "t2", "k1", "k2"), client
        if "server" in facts:
            assert str(facts["server"]).startswith("affinity-serve"), client
        if "inputs" in facts:
            assert facts["inputs"] == ["input"], client
    if which == "triton":
        assert seen["triton_http"]["binary"] is True, "the answer came back as binary data"
        assert MODEL in seen["triton_grpc"]["index"]  # type: ignore[operator]
