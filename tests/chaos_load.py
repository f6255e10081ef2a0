"""Open-loop load for chaos tests: ``affinity loadgen`` in a process of its own,
faults injected by the test at known instants, and the report cut into before,
during and after the fault for docs/reliability.md.

``time.monotonic()`` is one clock for every process on the host, so the report's
``measured_from`` places the test's fault instants on its per-second series.
A run's summary is written as JSON under ``$AFFINITY_CHAOS_REPORT`` when set (the
figures docs/reliability.md quotes), never asserted on: tests assert counts.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from loadgen.report import Report
from tests.harness import affinity, request
from tests.metrics_text import metric_sum


def balancer_requests(url: str) -> float:
    return metric_sum(request(url, "GET", "/metrics").body.decode(), "affinity_requests_total", role="balancer")


@dataclass
class LoadRun:
    """One ``affinity loadgen`` run in the background."""

    url: str
    out: Path
    rate: float = 40.0
    duration: float = 9.0
    models: tuple[str, ...] = ()
    seed: int = field(default_factory=lambda: secrets.randbits(32))  # fresh bodies: every request a cache miss
    proc: subprocess.Popen[bytes] | None = None
    events: dict[str, float] = field(default_factory=dict)  # name -> time.monotonic()

    def start(self) -> LoadRun:
        args = affinity(
            "loadgen", "--url", self.url, "--rate", str(self.rate), "--duration", str(self.duration),
            "--timeout", "15", "--max-outstanding", "400", "--seed", str(self.seed), "--out", str(self.out),
        )  # fmt: skip
        if self.models:
            args += ["--models", ",".join(self.models)]
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / "loadgen.log").open("wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def mark(self, event: str) -> None:
        self.events[event] = time.monotonic()

    def wait_until_sending(self, balancer_url: str, requests: int = 20, timeout: float = 30.0) -> None:
        """Until the balancer has counted ``requests`` more inferences (the generator has
        started its measured run: it has no warm-up)."""
        start = balancer_requests(balancer_url)
        deadline = time.monotonic() + timeout
        while balancer_requests(balancer_url) < start + requests:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError((self.out / "loadgen.log").read_text(errors="replace")[-2000:])
            if time.monotonic() > deadline:
                raise TimeoutError("the load generator did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill the generator if it still runs (a test that failed before ``finish``)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def finish(self, timeout: float = 90.0) -> Report:
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        log = (self.out / "loadgen.log").read_text(errors="replace")
        assert self.proc.returncode == 0, log[-3000:]
        return Report.read(self.out / "report.json")


def phases(report: Report, events: dict[str, float], fault: str, healed: str) -> dict[str, Any]:
    """Requests and latency before the fault, while it lasted and after it healed."""
    start = report.measured_from
    cut_in = events[fault] - start
    cut_out = events[healed] - start
    out: dict[str, Any] = {}
    for name, rows in (
        ("before", [r for r in report.series if r.second + 1 <= cut_in]),
        ("during", [r for r in report.series if r.second + 1 > cut_in and r.second < cut_out]),
        ("after", [r for r in report.series if r.second >= cut_out]),
    ):
        done = [r for r in rows if r.ok]
        out[name] = {
            "seconds": len(rows),
            "ok": sum(r.ok for r in rows),
            "errors": sum(r.errors for r in rows),
            "p50_ms": round(max((r.p50_ms for r in done), default=0.0), 1),
            "p99_ms": round(max((r.p99_ms for r in done), default=0.0), 1),
            "max_ms": round(max((r.max_ms for r in done), default=0.0), 1),
        }
    return out


def summary(
    name: str, report: Report, events: dict[str, float], fault: str, healed: str, **extra: Any
) -> dict[str, Any]:
    result = {
        "scenario": name,
        "sent": report.counts.sent,
        "succeeded": report.counts.ok,
        "failed": report.counts.errors,
        "dropped": report.counts.dropped,
        "errors_by_kind": report.errors_by_kind,
        "offered_rps": round(report.offered_rps, 1),
        "cache": {"hit": report.cache.hit, "miss": report.cache.miss, "bypass": report.cache.bypass},
        "events_s": {k: round(v - report.measured_from, 2) for k, v in events.items()},
        "latency_ms": phases(report, events, fault, healed),
        **extra,
    }
    where = os.environ.get("AFFINITY_CHAOS_REPORT")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        (Path(where) / f"{name}.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(result).decode())
    return result


MIGRATE = Path("/proc/sys/net/ipv4/tcp_migrate_req")


@contextlib.contextmanager
def migrate_queued_connections() -> Iterator[bool]:
    """net.ipv4.tcp_migrate_req = 1 for the block when this process may set it (root),
    the old value restored after; yields whether it is on."""
    if not MIGRATE.exists() or os.environ.get("AFFINITY_CHAOS_NO_MIGRATE"):  # the latter: to measure without
        yield MIGRATE.exists() and MIGRATE.read_text().strip() == "1"
        return
    old = MIGRATE.read_text().strip()
    try:
        MIGRATE.write_text("1")
    except OSError:
        yield old == "1"
        return
    try:
        yield True
    finally:
        MIGRATE.write_text(old)
