"""Workers die, stop and drain under load; a hot model spreads; a spill finds the
model in memory. Real worker and balancer processes on loopback; every burst is
bounded in count, every wait in time; a stopped worker is always continued."""

from __future__ import annotations

import itertools
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from balancer.ring import HashRing
from tests.conftest import ZOO_MODELS
from tests.harness import Server, home, private_cluster, request, start_worker, wait_until
from tests.metrics_text import metric_sum
from tests.reference import infer_body, sample_inputs

NO_CACHE = {"Cache-Control": "no-cache, no-store"}
_seeds = itertools.count(50_000)


def infer(balancer: Server, zoo: Path, model: str) -> tuple[int, str]:
    body = infer_body(sample_inputs(zoo, model, 1, next(_seeds)))
    resp = request(balancer.url, "POST", f"/v2/models/{model}/infer", body, NO_CACHE)
    return resp.status, resp.headers.get("x-served-by", "")


def cluster(balancer: Server) -> dict:  # type: ignore[type-arg]
    return request(balancer.url, "GET", "/admin/cluster").json()  # type: ignore[no-any-return]


def state(balancer: Server, worker_id: str) -> str:
    return next(w["state"] for w in cluster(balancer)["workers"] if w["id"] == worker_id)


def scrape(balancer: Server) -> str:
    return request(balancer.url, "GET", "/metrics").body.decode()


@contextmanager
def burst(balancer: Server, zoo: Path, models: list[str], count: int, threads: int = 6) -> Iterator[dict]:  # type: ignore[type-arg]
    """Send ``count`` requests over ``threads``; yields once a third are answered; the
    outcomes (status, served by) are in ``result["outcomes"]`` after the block."""
    third = threading.Event()
    done = itertools.count(1)
    result: dict = {}  # type: ignore[type-arg]

    def one(i: int) -> tuple[int, str]:
        outcome = infer(balancer, zoo, models[i % len(models)])
        if next(done) == count // 3:
            third.set()
        return outcome

    with ThreadPoolExecutor(threads) as pool:
        pending = pool.map(one, range(count))
        assert third.wait(60)
        yield result
        result["outcomes"] = list(pending)


def test_sigkill_one_of_three_during_a_burst(zoo: Path, logdir: Path) -> None:
    args = ("--policy", "consistent", "--health-interval", "0.3", "--ejection-time", "1", "--max-ejection-time", "1")
    with private_cluster(zoo, logdir, 3, *args) as (workers, balancer):
        ring = HashRing(w.id for w in workers)
        victim = next(w for w in workers if home(balancer, "mlp-00") == w.id)
        owned = [m for m in ZOO_MODELS if home(balancer, m) == victim.id]
        with burst(balancer, zoo, list(ZOO_MODELS), 240) as result:
            victim.proc.kill(signal.SIGKILL)
        statuses = Counter(status for status, _ in result["outcomes"])
        assert statuses == {200: 240}, statuses

        wait_until(lambda: state(balancer, victim.id) in ("down", "ejected"))
        assert metric_sum(scrape(balancer), "affinity_worker_ejections_total", worker=victim.id) >= 1
        for model in owned:
            next_owner = next(w for w in ring.preference_list(model) if w != victim.id)
            assert infer(balancer, zoo, model) == (200, next_owner)
        assert set(cluster(balancer)["models"]["mlp-00"]["candidates"]) == {w.id for w in workers} - {victim.id}

        restarted = start_worker(zoo, logdir, port=victim.port).wait_ready()
        try:
            wait_until(lambda: state(balancer, victim.id) == "healthy", timeout=20)
            for model in owned:
                assert infer(balancer, zoo, model) == (200, victim.id), "re-admitted: its models come back"
        finally:
            restarted.proc.stop()


def test_sigstop_moves_requests_by_per_try_timeout_and_ejects_until_it_answers(zoo: Path, logdir: Path) -> None:
    args = ("--policy", "consistent", "--try-timeout", "1", "--eject-after", "1")
    args += ("--ejection-time", "1", "--max-ejection-time", "1")
    args += ("--health-interval", "0.3", "--health-timeout", "0.5", "--unhealthy-threshold", "2")
    with private_cluster(zoo, logdir, 3, *args) as (workers, balancer):
        ring = HashRing(w.id for w in workers)
        model = "mlp-00"
        victim = next(w for w in workers if home(balancer, model) == w.id)
        next_owner = next(w for w in ring.preference_list(model) if w != victim.id)
        assert infer(balancer, zoo, model) == (200, victim.id)
        victim.proc.kill(signal.SIGSTOP)
        try:
            assert infer(balancer, zoo, model) == (200, next_owner), "the per-try timeout moved it"
            text = scrape(balancer)
            assert metric_sum(text, "affinity_retries_total", reason="timeout") == 1
            assert metric_sum(text, "affinity_worker_ejections_total", worker=victim.id, reason="outlier") == 1
            # Still stopped: its ejection runs out, but the failing probes keep it out.
            wait_until(lambda: state(balancer, victim.id) == "down", timeout=15)
            for _ in range(3):
                assert infer(balancer, zoo, model) == (200, next_owner)
            assert metric_sum(scrape(balancer), "affinity_retries_total") == 1, "no more tries at the stopped worker"
        finally:
            victim.proc.kill(signal.SIGCONT)
        wait_until(lambda: state(balancer, victim.id) == "healthy", timeout=15)
        assert infer(balancer, zoo, model) == (200, victim.id)


def test_drain_during_a_burst_loses_nothing(zoo: Path, logdir: Path) -> None:
    with private_cluster(zoo, logdir, 2, "--policy", "consistent") as (workers, balancer):
        victim = next(w for w in workers if home(balancer, "mlp-00") == w.id)
        with burst(balancer, zoo, ["mlp-00"], 200) as result:
            drained = request(balancer.url, "POST", f"/admin/workers/{victim.id}/drain", b"")
            assert drained.status == 200 and drained.json()["drained"] is True
            after = [infer(balancer, zoo, "mlp-00") for _ in range(5)]
        assert Counter(s for s, _ in result["outcomes"]) == {200: 200}
        assert {by for _, by in result["outcomes"]} == {w.id for w in workers}, "both served part of the burst"
        assert after == [(200, next(w.id for w in workers if w is not victim))] * 5


def hot_burst(balancer: Server, zoo: Path, model: str, count: int, threads: int) -> Counter[str]:
    with ThreadPoolExecutor(threads) as pool:
        outcomes = list(pool.map(lambda _: infer(balancer, zoo, model), range(count)))
    assert all(status == 200 for status, _ in outcomes)
    return Counter(by for _, by in outcomes)


def test_a_hot_model_spreads_under_affinity_and_stays_put_under_consistent(zoo: Path, logdir: Path) -> None:
    model = "transformer-02"
    with private_cluster(zoo, logdir, 3, "--policy", "consistent") as (_, balancer):
        assert len(hot_burst(balancer, zoo, model, 120, 8)) == 1
    # The bounded-load spread itself: no slack keeping a burst at a warm owner (that rule
    # has its own test in tests/test_policies.py).
    with private_cluster(zoo, logdir, 3, "--policy", "affinity", "--cold-spill-slack", "0") as (_, balancer):
        served = hot_burst(balancer, zoo, model, 120, 8)
        assert len(served) > 1, served
        assert metric_sum(scrape(balancer), "affinity_route_decisions_total", decision="primary") < 120


def test_a_spill_lands_on_a_worker_that_holds_the_model(zoo: Path, logdir: Path) -> None:
    """The owner is busy: the spill skips the ring successor (cold) for the next
    worker, which holds the model in memory. Five clients keep at most 4 requests
    in flight as one is placed, which the owner and the holder can always take
    (cap = ceil(1.25 x 5 / 3) = 3 each), so the cold successor is never needed."""
    model = "transformer-02"
    args = ("--policy", "affinity", "--max-replicas", "1", "--balance-factor", "1.25")
    with private_cluster(zoo, logdir, 3, *args) as (workers, balancer):
        order = cluster(balancer)["models"][model]["candidates"]  # its home first, then ring order
        owner, _successor, holder = order
        url = {w.id: w.url for w in workers}
        body = infer_body(sample_inputs(zoo, model, 1, 7))
        assert request(url[holder], "POST", f"/v2/models/{model}/infer", body).status == 200  # loaded there
        wait_until(lambda: cluster(balancer)["models"][model]["resident_on"] == [holder], timeout=15)
        served = hot_burst(balancer, zoo, model, 150, 5)
        assert served[holder] > 0, served
        assert set(served) == {owner, holder}, served
        text = scrape(balancer)
        assert metric_sum(text, "affinity_route_decisions_total", decision="resident_spill") == served[holder]
        assert metric_sum(text, "affinity_route_decisions_total", decision="spill") == 0


def test_a_worker_answers_504_when_loading_used_up_the_deadline(zoo: Path, logdir: Path) -> None:
    worker = start_worker(zoo, logdir).wait_ready()
    try:
        body = infer_body(sample_inputs(zoo, "cnn-01", 1, 3))
        path = "/v2/models/cnn-01/infer"
        late = request(worker.url, "POST", path, body, {"X-Request-Timeout": "0"})
        assert late.status == 504 and "deadline" in late.json()["error"]
        assert request(worker.url, "POST", path, body, {"X-Request-Timeout": "30"}).status == 200
        assert request(worker.url, "POST", path, body, {"X-Request-Timeout": "-1"}).status == 400
    finally:
        worker.proc.stop()
