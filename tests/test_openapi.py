"""The OpenAPI description: every route in the routers is described (and nothing
else), each process serves its own part at /openapi.json, and a schema-driven fuzz
(schemathesis, a bounded number of examples per operation) finds no server error
and no answer that breaks the schema, on the balancer and on a worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from balancer.handlers import BalancerHandlers
from common.openapi import ROLES, document, routes
from tests.harness import Server, request
from worker.handlers import WorkerHandlers

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
EXAMPLES = 20  # per operation and phase: the whole fuzz stays within seconds


def router_patterns(role: str) -> set[tuple[str, str]]:
    """The routes a part's router holds (built without a service: only the table is read)."""
    handlers: Any = object.__new__(BalancerHandlers if role == "balancer" else WorkerHandlers)
    handlers.keys = handlers.token = handlers.admin_token = None
    return set(handlers.routes().patterns)


@pytest.mark.parametrize("role", ROLES)
def test_every_route_is_described_and_nothing_else(role: str) -> None:
    served = router_patterns(role)
    described = routes(document(role))
    assert served - described == set(), "routes without a description"
    assert described - served == set(), "descriptions of routes this process does not serve"
    for item in document(role)["paths"].values():
        for operation in item.values():
            assert operation["summary"] and operation["responses"]
            for status, answer in operation["responses"].items():
                if int(status) >= 400:  # a V2 error body (readiness answers 503 {"ready": false})
                    schema = str(answer["content"]["application/json"]["schema"])
                    assert "Error" in schema or "Ready" in schema, status


def test_each_process_serves_its_own_part(balancer: Server, workers: list[Server]) -> None:
    for role, server in (("balancer", balancer), ("worker", workers[0])):
        resp = request(server.url, "GET", "/openapi.json")
        assert resp.status == 200 and resp.headers["content-type"] == "application/json"
        assert resp.json() == document(role)


def schemathesis_run(base: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    """``schemathesis run`` against a process's own /openapi.json: examples, the
    coverage phase's boundary values and random fuzzing, at most ``EXAMPLES`` cases
    per operation and phase, a fixed seed (so a failure reproduces)."""
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{base}/openapi.json"]
    command += ["--checks", ",".join(CHECKS), "--phases", "examples,coverage,fuzzing"]
    command += ["--max-examples", str(EXAMPLES), "--seed", "1", "--request-timeout", "30", "--workers", "1"]
    command += ["--report", "junit", "--report-dir", str(tmp), "--no-color"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp, check=False)


@pytest.mark.parametrize("role", ROLES)
def test_schema_driven_fuzz_finds_no_server_error_and_no_answer_off_schema(
    role: str, balancer: Server, workers: list[Server], tmp_path: Path
) -> None:
    server = balancer if role == "balancer" else workers[0]
    run = schemathesis_run(server.url, tmp_path)
    summary = run.stdout[run.stdout.find("SUMMARY") :] or run.stdout[-3000:]
    assert run.returncode == 0, f"{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
    assert "generated" in summary and " passed" in summary, summary
    for server_ in (balancer, *workers):
        assert request(server_.url, "GET", "/v2/health/ready").status == 200, "still healthy"
