"""A worker dies: requests for the models placed on it go to the next worker on the ring."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.conftest import ZOO_MODELS
from tests.harness import home, private_cluster, request, start_worker, wait_until
from tests.reference import infer_body, sample_inputs


def test_killed_worker_models_move_to_next_owner(zoo: Path, logdir: Path) -> None:
    with private_cluster(zoo, logdir, 2, "--policy", "consistent") as (workers, balancer):
        victim = workers[0]
        owned = [m for m in ZOO_MODELS if home(balancer, m) == victim.id] or ["mlp-00"]
        survivor = workers[1]

        victim.proc.kill(signal.SIGKILL)
        for seed, model in enumerate(owned):
            body = infer_body(sample_inputs(zoo, model, 1, seed))
            resp = request(balancer.url, "POST", f"/v2/models/{model}/infer", body)
            assert resp.status == 200, resp.body
            assert resp.headers["x-served-by"] == survivor.id
        assert request(balancer.url, "GET", "/v2/health/ready").status == 200


def test_sigterm_drains_worker(zoo: Path, logdir: Path) -> None:
    """During the drain delay the worker says not-ready (503) yet still answers inference."""
    worker = start_worker(zoo, logdir, "--drain-delay", "3").wait_ready()
    body = infer_body(sample_inputs(zoo, "mlp-00", 1, 0))
    try:
        worker.proc.kill(signal.SIGTERM)
        wait_until(lambda: request(worker.url, "GET", "/v2/health/ready").status == 503)
        assert request(worker.url, "GET", "/v2/health/ready").json() == {"ready": False}
        assert request(worker.url, "POST", "/v2/models/mlp-00/infer", body).status == 200
        assert worker.proc.popen is not None
        assert worker.proc.popen.wait(15) == 0
        assert "draining" in worker.proc.log_tail()
    finally:
        worker.proc.stop()


def test_worker_stopped_during_a_burst_loses_no_request(zoo: Path, logdir: Path) -> None:
    """SIGTERM a worker while a bounded burst runs through the balancer: the worker
    finishes what it accepted, the rest is retried on the next worker, nothing fails."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    with private_cluster(zoo, logdir, 2, "--policy", "consistent") as (workers, balancer):
        model = "mlp-00"
        victim = next(w for w in workers if home(balancer, model) == w.id)
        bodies = [infer_body(sample_inputs(zoo, model, 1, seed)) for seed in range(400)]
        sent = threading.Event()

        def one(i: int) -> tuple[int, str]:
            if i == 100:
                sent.set()
            resp = request(balancer.url, "POST", f"/v2/models/{model}/infer", bodies[i], {"Cache-Control": "no-cache"})
            return resp.status, resp.headers.get("x-served-by", "")

        with ThreadPoolExecutor(8) as pool:
            results = pool.map(one, range(len(bodies)))
            sent.wait(30)
            victim.proc.kill(signal.SIGTERM)
            outcomes = list(results)
        statuses = [status for status, _ in outcomes]
        assert statuses.count(200) == len(bodies), {s: statuses.count(s) for s in set(statuses)}
        served = {by for _, by in outcomes}
        assert served == {w.id for w in workers}, "the stop happened mid-burst: both workers served part of it"
        assert victim.proc.popen is not None and victim.proc.popen.wait(15) == 0


def test_sigterm_stops_the_balancer_cleanly(zoo: Path, logdir: Path) -> None:
    with private_cluster(zoo, logdir, 1, "--drain-delay", "3") as (_, balancer):
        body = infer_body(sample_inputs(zoo, "mlp-00", 1, 0))
        assert request(balancer.url, "POST", "/v2/models/mlp-00/infer", body).status == 200
        balancer.proc.kill(signal.SIGTERM)
        wait_until(lambda: request(balancer.url, "GET", "/v2/health/ready").status == 503)
        assert request(balancer.url, "GET", "/v2/health/ready").json() == {"ready": False}
        body = infer_body(sample_inputs(zoo, "mlp-00", 1, 1))
        assert request(balancer.url, "POST", "/v2/models/mlp-00/infer", body).status == 200, "still serving"
        assert balancer.proc.popen is not None
        assert balancer.proc.popen.wait(15) == 0
        log = balancer.proc.log_tail()
        assert "draining" in log and "stopped" in log
        assert "Traceback" not in log and "Unclosed" not in log


def test_no_worker_left_is_a_502_with_retry_after(zoo: Path, logdir: Path) -> None:
    with private_cluster(zoo, logdir, 1) as (workers, balancer):
        workers[0].proc.kill(signal.SIGKILL)
        body = infer_body(sample_inputs(zoo, "mlp-00", 1, 5))
        resp = request(balancer.url, "POST", "/v2/models/mlp-00/infer", body)
        assert resp.status == 502
        assert resp.headers["retry-after"] == "1"
        assert "error" in resp.json()


def test_an_answer_over_the_limit_is_a_502_and_is_not_retried(zoo: Path, logdir: Path) -> None:
    from tests.metrics_text import metric_sum

    # Room for the index and metadata the balancer reads, not for a 64-row answer (~8 KB).
    with private_cluster(zoo, logdir, 2, "--max-upstream-answer", "4000") as (workers, balancer):
        body = infer_body(sample_inputs(zoo, "mlp-00", 64, 11))
        resp = request(balancer.url, "POST", "/v2/models/mlp-00/infer", body)
        assert resp.status == 502 and "max-upstream-answer" in resp.json()["error"]
        served = [
            metric_sum(request(w.url, "GET", "/metrics").body.decode(), "affinity_requests_total", model="mlp-00")
            for w in workers
        ]
        assert sorted(served) == [0, 1], "the model's own answer is not retried on another worker"
