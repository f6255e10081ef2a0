"""What the router does with each kind of failure, through a real balancer process
in front of controllable fake workers (a real worker cannot answer 502 or a 503
without Retry-After on demand)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from balancer.ring import HashRing
from common.process import free_port
from tests.fake_worker import Answer, FakeWorker
from tests.harness import Server, request, start_balancer, wait_until
from tests.metrics_text import metric_sum

BODY = orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]})
NO_CACHE = {"Cache-Control": "no-cache, no-store"}


class Script:
    """What the owner answers to inference, changeable while the test runs."""

    def __init__(self) -> None:
        self.answer: Answer | None = None

    def __call__(self, path: str) -> Answer | None:
        return self.answer


@contextlib.contextmanager
def fake_cluster(
    logdir: Path, *balancer_args: str, hold: float = 0.0
) -> Iterator[tuple[FakeWorker, FakeWorker, Server, Script]]:
    """Two fake workers and a balancer (consistent policy): the owner of model ``m``
    answers what its script says, the other answers 200."""
    script = Script()
    ids = ("fake-a", "fake-b")
    owner_id = HashRing(ids).preference_list("m")[0]
    fakes = {i: FakeWorker(i, script=script if i == owner_id else (lambda path: None), hold=hold).start() for i in ids}
    owner, other = fakes[owner_id], fakes[next(i for i in ids if i != owner_id)]
    balancer = None
    try:
        args = ("--policy", "consistent", *balancer_args)
        balancer = start_balancer([owner, other], logdir, *args).wait_ready()  # type: ignore[list-item]
        yield owner, other, balancer, script
    finally:
        if balancer is not None:
            balancer.proc.stop()
        for fake in fakes.values():
            fake.stop()


def infer(balancer: Server, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return request(balancer.url, "POST", "/v2/models/m/infer", BODY, {**NO_CACHE, **(headers or {})})


def metrics(balancer: Server) -> str:
    return request(balancer.url, "GET", "/metrics").body.decode()


def states(balancer: Server) -> dict[str, str]:
    cluster = request(balancer.url, "GET", "/admin/cluster").json()
    return {w["id"]: w["state"] for w in cluster["workers"]}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Answer:
    return status, headers or {}, orjson.dumps({"error": message})


def test_a_retryable_answer_is_retried_on_the_next_worker_and_never_reaches_the_client(logdir: Path) -> None:
    with fake_cluster(logdir, "--eject-after", "100") as (owner, other, balancer, script):
        for status in (502, 503, 504):
            script.answer = error(status, f"owner says {status}")  # a 503 without Retry-After: not an overload
            tried = owner.infers()
            resp = infer(balancer)
            assert resp.status == 200, (status, resp.body)
            assert resp.headers["x-served-by"] == other.worker_id
            assert owner.infers() == tried + 1, "the owner was tried first"
            assert metric_sum(metrics(balancer), "affinity_retries_total", reason=f"status_{status}") == 1
        assert metric_sum(metrics(balancer), "affinity_route_decisions_total", decision="retry") == 3


@pytest.mark.parametrize("status", [400, 404, 500, 507])
def test_a_models_own_failure_passes_through_and_ejects_nobody(logdir: Path, status: int) -> None:
    with fake_cluster(logdir, "--eject-after", "2") as (_owner, other, balancer, script):
        script.answer = error(status, "the model's own failure")
        for _ in range(4):
            resp = infer(balancer)
            assert resp.status == status
            assert resp.json() == {"error": "the model's own failure"}
        assert other.infers() == 0, "never retried elsewhere"
        assert set(states(balancer).values()) == {"healthy"}
        assert metric_sum(metrics(balancer), "affinity_worker_ejections_total") == 0


def test_overload_is_retried_but_never_counted_and_a_plain_503_ejects(logdir: Path) -> None:
    args = ("--eject-after", "3", "--ejection-time", "60", "--max-ejection-time", "60")
    with fake_cluster(logdir, *args) as (owner, other, balancer, script):
        script.answer = error(503, "busy", {"Retry-After": "1"})
        for _ in range(6):
            resp = infer(balancer)
            assert resp.status == 200 and resp.headers["x-served-by"] == other.worker_id
        assert owner.infers() == 6, "every request tried the owner first"
        assert states(balancer)[owner.worker_id] == "healthy", "shedding load is not failing"

        script.answer = error(503, "broken in a way that says no Retry-After")
        for _ in range(3):
            assert infer(balancer).status == 200
        assert states(balancer)[owner.worker_id] == "ejected"
        assert metric_sum(metrics(balancer), "affinity_worker_ejections_total", reason="outlier") == 1
        tried = owner.infers()
        assert infer(balancer).headers["x-served-by"] == other.worker_id
        assert owner.infers() == tried, "an ejected worker is not a candidate"


def test_the_retry_budget_bounds_retries_with_a_floor(logdir: Path) -> None:
    # No share of requests, a floor of 1 retry a second over 5 s: exactly 5 retries.
    args = ("--eject-after", "1000", "--retry-ratio", "0", "--retry-floor", "1", "--retry-window", "5")
    with fake_cluster(logdir, *args) as (_owner, _other, balancer, script):
        script.answer = error(502, "down")
        statuses = [infer(balancer).status for _ in range(8)]
        assert statuses == [200] * 5 + [502] * 3
        text = metrics(balancer)
        assert metric_sum(text, "affinity_retries_total") == 5
        assert metric_sum(text, "affinity_retries_denied_total", reason="budget") == 3


def test_the_deadline_travels_to_the_worker_and_ends_the_request(logdir: Path) -> None:
    with fake_cluster(logdir, "--eject-after", "1", hold=1.5) as (owner, other, balancer, _):
        resp = infer(balancer, {"X-Request-Timeout": "5"})
        assert resp.status == 200
        sent = [h for _, path, h in owner.seen if path.endswith("/infer")][-1]
        assert 0 < float(sent["X-Request-Timeout"]) <= 5

        resp = infer(balancer, {"X-Request-Timeout": "0.3"})
        assert resp.status == 504, "the deadline ended the request: no retry after it"
        assert other.infers() == 0
        assert metric_sum(metrics(balancer), "affinity_retries_denied_total", reason="deadline") == 1
        assert set(states(balancer).values()) == {"healthy"}, "a try cut by the request's deadline counts for nothing"
        assert infer(balancer, {"X-Request-Timeout": "soon"}).status == 400


def test_backpressure_answers_503_with_retry_after(logdir: Path) -> None:
    args = ("--max-inflight-per-worker", "1", "--max-inflight", "100")
    with fake_cluster(logdir, *args, hold=2.0) as (owner, other, balancer, _):
        start = threading.Barrier(4)

        def one(_: int):  # type: ignore[no-untyped-def]
            start.wait()
            return infer(balancer)

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(one, range(4)))
        shed = [a for a in answers if a.status == 503]
        assert len(shed) >= 2, [a.status for a in answers]
        assert all(a.headers["retry-after"] == "1" and "limit" in a.json()["error"] for a in shed)
        assert owner.infers() + other.infers() == 4 - len(shed), "a refused request never reached a worker"
        assert metric_sum(metrics(balancer), "affinity_shed_total", limit="worker") == len(shed)


def test_admin_routes_need_the_token_and_repository_calls_go_to_the_owner(logdir: Path) -> None:
    with fake_cluster(logdir, "--admin-token", "s3cret") as (owner, other, balancer, _):
        auth = {"Authorization": "Bearer s3cret"}
        for method, path in (
            ("GET", "/admin/cluster"),
            ("POST", "/v2/repository/models/m/load"),
            ("POST", "/v2/repository/models/m/unload"),
            ("POST", f"/admin/workers/{owner.worker_id}/drain"),
        ):
            resp = request(balancer.url, method, path, b"")
            assert resp.status == 401 and resp.headers["www-authenticate"] == "Bearer", path
            wrong = request(balancer.url, method, path, b"", {"Authorization": "Bearer guess"})
            assert wrong.status == 401, path
        assert not [p for _, p, _ in owner.seen + other.seen if "/repository/models/" in p]

        index_calls = owner.index_calls
        resp = request(balancer.url, "POST", "/v2/repository/models/m/load", b"{}", auth)
        assert resp.status == 200, resp.body
        assert resp.json()["workers"] == {owner.worker_id: 200}
        sent = [h for _, p, h in owner.seen if p == "/v2/repository/models/m/load"]
        assert sent and sent[0]["Authorization"] == "Bearer s3cret", "the balancer calls workers with the token"
        assert owner.index_calls > index_calls, "the index is refreshed after a load"
        assert request(balancer.url, "POST", "/v2/repository/models/nope/load", b"{}", auth).status == 404

        cluster = request(balancer.url, "GET", "/admin/cluster", None, auth).json()
        assert cluster["policy"] == "consistent"
        assert sorted(cluster["ring"]["workers"]) == sorted([owner.worker_id, other.worker_id])
        assert cluster["models"]["m"]["preference_list"][0] == owner.worker_id
        assert {w["id"]: w["capacity"] for w in cluster["workers"]} == {
            owner.worker_id: owner.capacity,
            other.worker_id: other.capacity,
        }


def test_drain_waits_for_in_flight_requests_and_sends_no_new_ones(logdir: Path) -> None:
    with fake_cluster(logdir, hold=1.5) as (owner, other, balancer, _):
        with ThreadPoolExecutor(3) as pool:
            pending = [pool.submit(infer, balancer) for _ in range(3)]
            wait_until(lambda: owner.infers() == 3)
            drained = request(balancer.url, "POST", f"/admin/workers/{owner.worker_id}/drain", b"")
            assert drained.status == 200
            assert drained.json() == {"worker": owner.worker_id, "drained": True, "inflight": 0}
            assert [p.result().status for p in pending] == [200, 200, 200]
        assert states(balancer)[owner.worker_id] == "draining"
        resp = infer(balancer)
        assert resp.status == 200 and resp.headers["x-served-by"] == other.worker_id
        assert owner.infers() == 3
        assert request(balancer.url, "POST", "/admin/workers/nobody/drain", b"").status == 404
        request(balancer.url, "POST", f"/admin/workers/{owner.worker_id}/undrain", b"")
        assert infer(balancer).headers["x-served-by"] == owner.worker_id


def test_a_balancer_that_never_heard_from_a_worker_answers_503_not_404(logdir: Path) -> None:
    """Not knowing the index is not "no such model": until a worker has answered, a
    model's requests get 503 with Retry-After (retry soon), and the same requests
    succeed once the worker is up; a name the loaded index lacks is then 404."""
    port = free_port()
    front = start_balancer([], logdir, "--workers", f"http://127.0.0.1:{port}", "--discovery-interval", "0.2")
    fake: FakeWorker | None = None
    try:
        wait_until(lambda: live(front), 20, 0.1)
        for method, path, body in [("POST", "/v2/models/m/infer", BODY), ("GET", "/v2/models/m", b"")]:
            resp = request(front.url, method, path, body, NO_CACHE)
            assert resp.status == 503, (path, resp.status, resp.body)
            assert resp.headers.get("retry-after") == "1" and "index" in resp.json()["error"]
        fake = FakeWorker("127.0.0.1:fake", port=port).start()
        wait_until(lambda: request(front.url, "POST", "/v2/models/m/infer", BODY, NO_CACHE).status == 200, 20, 0.2)
        assert request(front.url, "POST", "/v2/models/other/infer", BODY, NO_CACHE).status == 404
    finally:
        front.proc.stop()
        if fake is not None:
            fake.stop()


def live(server: Server) -> bool:
    with contextlib.suppress(OSError):
        return request(server.url, "GET", "/v2/health/live").status == 200
    return False


def test_processes_sharing_a_port_listen_once_they_know_the_workers(logdir: Path) -> None:
    """One of several processes on a shared port does not listen before it has heard
    from a worker (the kernel would hand it connections it cannot serve while a
    sibling can, as in a rolling restart); once a worker is up, the first answer is
    the model's, never a 404 or a 503."""
    port = free_port()
    args = ("--workers", f"http://127.0.0.1:{port}", "--processes", "2", "--discovery-interval", "0.2")
    front = start_balancer([], logdir, *args)
    fake: FakeWorker | None = None
    try:
        time.sleep(1.0)
        assert front.proc.alive() and not live(front), "listening before any worker answered"
        fake = FakeWorker("127.0.0.1:fake", port=port).start()
        wait_until(lambda: live(front), 20, 0.1)
        first = request(front.url, "POST", "/v2/models/m/infer", BODY, NO_CACHE)
        assert first.status == 200, (first.status, first.body)
    finally:
        front.proc.stop()
        if fake is not None:
            fake.stop()
