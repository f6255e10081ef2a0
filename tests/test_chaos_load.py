"""Faults under open-loop load: nothing accepted is lost.

One balancer (Redis cache layer) in front of three workers, an open-loop load
(``affinity loadgen``, ~40 requests a second for 8 s, every body unique so every
request reaches a worker) and one fault per test, injected once the load runs:
SIGKILL a worker (then restart it), SIGSTOP one for 3 s, kill and restart Redis,
make a model's load fail, SIGTERM one of two balancer processes sharing a port.
Each test counts what the load sent, what succeeded and what failed, asserts
that no retryable request failed, and that the cluster is whole again (worker
re-admitted, Redis used again with its breaker closed, the model back); latency
before, during and after goes to the run's summary (``AFFINITY_CHAOS_REPORT``),
never into an assertion. The mechanisms themselves (ejection, per-try timeouts,
re-admission) are asserted one by one in tests/test_chaos.py.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from loadgen.report import Report
from tests.chaos_load import LoadRun, migrate_queued_connections, summary
from tests.harness import RedisServer, Server, home, request, start_balancer, start_worker, wait_until
from tests.metrics_text import metric_sum
from tests.test_chaos import scrape, state
from tests.test_processes import balancers_of, listening
from worker.zoo import make_zoo

MODELS = ("mlp-00", "cnn-01", "transformer-02", "logreg-03")
BALANCER = (
    "--try-timeout", "1", "--connect-timeout", "0.5", "--health-interval", "0.3", "--health-timeout", "0.5",
    "--unhealthy-threshold", "2", "--healthy-threshold", "2", "--ejection-time", "1", "--max-ejection-time", "2",
    "--redis-breaker-cooldown", "1", "--index-refresh", "1",
)  # fmt: skip


@dataclass
class Chaos:
    zoo: Path
    logdir: Path
    redis: RedisServer
    workers: list[Server]
    balancer: Server


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory, logdir: Path) -> Iterator[Chaos]:
    zoo = tmp_path_factory.mktemp("chaos-zoo")
    make_zoo(zoo, count=len(MODELS), min_size=64 << 10, max_size=256 << 10)
    redis = RedisServer(logdir).start()
    workers = [start_worker(zoo, logdir) for _ in range(3)]
    state_ = Chaos(zoo, logdir, redis, workers, workers[0])
    try:
        for w in workers:
            w.wait_ready()
        state_.balancer = start_balancer(workers, logdir, *BALANCER, "--redis-url", redis.url).wait_ready()
        yield state_
    finally:
        if state_.balancer is not workers[0]:
            state_.balancer.proc.stop()
        for w in state_.workers:
            w.proc.stop()
        state_.redis.stop()


def breaker_closed(balancer: Server) -> bool:
    return metric_sum(scrape(balancer), "affinity_cache_breaker_state", state="closed") == 1


def whole(chaos: Chaos) -> None:
    """Every worker admitted, every model ready, the Redis breaker closed."""
    for w in chaos.workers:
        wait_until(lambda w=w: state(chaos.balancer, w.id) == "healthy", timeout=20)
    wait_until(lambda: breaker_closed(chaos.balancer), timeout=20)

    def ready() -> bool:
        rows = request(chaos.balancer.url, "POST", "/v2/repository/index", b"{}").json()
        return {r["name"] for r in rows if r["state"] == "READY"} >= set(MODELS)

    wait_until(ready, timeout=20)


def no_failures(report: Report) -> None:
    counts = report.counts
    assert counts.errors == 0 and counts.dropped == 0, report.errors_by_kind
    assert counts.ok == counts.sent > 100, counts
    assert report.cache.hit == 0, "every body is new: every request reached a worker"


def owner_index(chaos: Chaos, model: str) -> int:
    """The worker ``model`` is placed on (it has requests to lose)."""
    owner = home(chaos.balancer, model)
    return next(i for i, w in enumerate(chaos.workers) if w.id == owner)


_RUNS: list[LoadRun] = []  # started by the current test


@pytest.fixture(autouse=True)
def _no_load_outlives_its_test() -> Iterator[None]:
    """A test that fails between starting its load and finishing it leaves no
    generator running into the next test."""
    yield
    while _RUNS:
        _RUNS.pop().stop()


def start_load(chaos: Chaos, out: Path, url: str | None = None) -> LoadRun:
    run = LoadRun(url or chaos.balancer.url, out, models=MODELS).start()
    _RUNS.append(run)
    run.wait_until_sending(url or chaos.balancer.url)
    time.sleep(1.5)  # a stretch of steady load before the fault
    return run


def test_sigkill_a_worker(chaos: Chaos, tmp_path: Path) -> None:
    whole(chaos)
    run = start_load(chaos, tmp_path)
    index = owner_index(chaos, "mlp-00")
    victim = chaos.workers[index]
    run.mark("fault")
    victim.proc.kill(signal.SIGKILL)
    time.sleep(1.0)
    chaos.workers[index] = start_worker(chaos.zoo, chaos.logdir, port=victim.port).wait_ready()
    wait_until(lambda: state(chaos.balancer, victim.id) == "healthy", timeout=20)
    run.mark("healed")
    report = run.finish()
    summary("sigkill-worker", report, run.events, "fault", "healed")
    no_failures(report)
    assert metric_sum(scrape(chaos.balancer), "affinity_worker_ejections_total", worker=victim.id) >= 1
    whole(chaos)


def test_sigstop_a_worker_for_three_seconds(chaos: Chaos, tmp_path: Path) -> None:
    whole(chaos)
    run = start_load(chaos, tmp_path)
    victim = chaos.workers[owner_index(chaos, "transformer-02")]
    retries = metric_sum(scrape(chaos.balancer), "affinity_retries_total", reason="timeout")
    run.mark("fault")
    victim.proc.kill(signal.SIGSTOP)
    try:
        time.sleep(3.0)
    finally:
        victim.proc.kill(signal.SIGCONT)
    run.mark("continued")
    wait_until(lambda: state(chaos.balancer, victim.id) == "healthy", timeout=20)
    run.mark("healed")
    report = run.finish()
    summary("sigstop-worker", report, run.events, "fault", "healed")
    no_failures(report)
    assert metric_sum(scrape(chaos.balancer), "affinity_retries_total", reason="timeout") > retries, "retried"
    whole(chaos)


def test_kill_and_restart_redis(chaos: Chaos, tmp_path: Path) -> None:
    whole(chaos)
    run = start_load(chaos, tmp_path)
    with chaos.redis.client() as c:
        assert c.dbsize() > 0, "the load's answers are stored in Redis"
    run.mark("fault")
    assert chaos.redis.proc is not None
    chaos.redis.proc.kill(signal.SIGKILL)
    wait_until(lambda: not breaker_closed(chaos.balancer), timeout=10)
    time.sleep(1.0)
    chaos.redis = RedisServer(chaos.logdir, port=chaos.redis.port).start()  # empty: it saved nothing
    wait_until(lambda: breaker_closed(chaos.balancer), timeout=15)
    run.mark("healed")
    report = run.finish()
    summary("redis-restart", report, run.events, "fault", "healed")
    no_failures(report)
    with chaos.redis.client() as c:
        assert c.dbsize() > 0, "used again: the load's later answers are stored in the new Redis"
    whole(chaos)


def test_a_model_load_fails(chaos: Chaos, tmp_path: Path) -> None:
    """cnn-01's weights turn to garbage, its owners reload it (500: the model's own
    failure, never retried elsewhere, never held against a worker), then the
    weights come back. Every failed request is one of cnn-01's 500s."""
    whole(chaos)
    weights = chaos.zoo / "cnn-01" / "1" / "model.safetensors"
    saved = weights.read_bytes()
    before = scrape(chaos.balancer)
    run = start_load(chaos, tmp_path)
    load = "/v2/repository/models/cnn-01/load"
    try:
        run.mark("fault")
        garbage = weights.with_name("garbage.tmp")
        garbage.write_bytes(b"\x80\x04 not safetensors" + bytes(64))
        os.replace(garbage, weights)  # renamed over, as a deploy would: the old mapping stays valid
        assert request(chaos.balancer.url, "POST", load, b"{}").status == 500
        time.sleep(2.5)
    finally:
        restored = weights.with_name("restored.tmp")
        restored.write_bytes(saved)
        os.replace(restored, weights)
    assert request(chaos.balancer.url, "POST", load, b"{}").status == 200
    run.mark("healed")
    report = run.finish()
    after = scrape(chaos.balancer)

    def delta(**labels: str) -> float:
        name = "affinity_requests_total"
        return metric_sum(after, name, role="balancer", **labels) - metric_sum(before, name, role="balancer", **labels)

    failed_500 = delta(code="500", model="cnn-01")
    summary("model-load-fails", report, run.events, "fault", "healed", cnn01_500s=failed_500)
    assert set(report.errors_by_kind) <= {"http_500"}, report.errors_by_kind
    assert report.counts.errors == failed_500 == delta(code="500") > 0, "every failure is cnn-01's own 500"
    assert report.counts.dropped == 0
    ejections = "affinity_worker_ejections_total"
    assert metric_sum(after, ejections) == metric_sum(before, ejections), "a model's failure ejects no worker"
    whole(chaos)


def queued_at_close(log: Path) -> int:
    """What the dying listener reported still queued when it closed."""
    total = 0
    for line in log.read_text(errors="replace").splitlines():
        if "still queued in it" in line:
            total += int(line.split("listener closed with ")[1].split(" ")[0])
    return total


def test_sigterm_one_of_two_balancer_processes(chaos: Chaos, tmp_path: Path) -> None:
    """A rolling restart of one process: it stops listening, answers what it
    accepted and exits; the supervisor starts another. With tcp_migrate_req the
    connections still queued in its listener move to the sibling's; without it
    (not root) the kernel resets them, and the test reports how many."""
    whole(chaos)
    front = start_balancer(chaos.workers, chaos.logdir, "--processes", "2", "--drain-delay", "0.5")
    try:
        front.wait_ready()
        wait_until(lambda: listening(front, 2), 20, 0.2)
        with migrate_queued_connections() as migrating:
            run = start_load(chaos, tmp_path, front.url)
            old = balancers_of(front)
            run.mark("fault")
            os.kill(old[0], signal.SIGTERM)
            wait_until(lambda: old[0] not in balancers_of(front) and listening(front, 2), 30, 0.1)
            run.mark("healed")
            report = run.finish()
        queued = queued_at_close(front.proc.log)
        summary(
            "balancer-process-sigterm", report, run.events, "fault", "healed",
            tcp_migrate_req=int(migrating), queued_in_dying_listener=queued,
        )  # fmt: skip
        assert report.counts.dropped == 0
        if migrating:
            no_failures(report)
        else:  # only connections the kernel reset in the dying listener's queue may fail
            assert report.counts.errors <= queued and set(report.errors_by_kind) <= {"connection"}, report
        assert old[1] in balancers_of(front), "the other process served throughout"
    finally:
        front.proc.stop()
