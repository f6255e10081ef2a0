"""The router in-process, over a fake transport: admission (no healthy worker,
panic, in-flight caps), what counts toward ejection, route decisions, and the
contract the gRPC front relies on (``Router.call(model, attempt)``)."""

from __future__ import annotations

import asyncio
import time

import pytest

from balancer.errors import UpstreamError
from balancer.health import HealthBook, HealthSettings
from balancer.members import Members, WorkerAddress
from balancer.metrics import BalancerMetrics
from balancer.policy import PolicyContext, make_policy
from balancer.replicas import ReplicaScaler
from balancer.residency import Residency
from balancer.router import Router, RouterSettings
from balancer.transport import UpstreamResponse
from protocol.errors import DeadlineExceeded, Overloaded, Unavailable, UpstreamUnavailable

WORKERS = ("a", "b", "c", "d")


class FakeTransport:
    """Answers by worker URL: a status, an exception kind, or a wait on an event."""

    def __init__(self) -> None:
        self.answers: dict[str, int | str] = {}
        self.calls: list[tuple[str, dict[str, str] | None, float | None]] = []
        self.gate: asyncio.Event | None = None
        self.delay = 0.0

    async def send(
        self,
        base_url: str,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
        try_timeout: float | None = None,
    ) -> UpstreamResponse:
        worker = base_url.removeprefix("http://")
        self.calls.append((worker, headers, try_timeout))
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay)
        answer = self.answers.get(worker, 200)
        if isinstance(answer, str):
            raise UpstreamError(answer)
        return UpstreamResponse(answer, b"{}", {"X-Model-Source": "cpu"})

    async def close(self) -> None:
        return None


def make(policy: str = "consistent", settings: RouterSettings | None = None, eject_after: int = 2) -> Router:
    health = HealthBook(HealthSettings(eject_after=eject_after, fall=1))
    members = Members({w: WorkerAddress(f"http://{w}") for w in WORKERS}, health, panic_threshold=0.5)
    residency, replicas = Residency(), ReplicaScaler()
    metrics = BalancerMetrics(lambda m: True, members.inflight)
    context = PolicyContext(members.shares, residency.holds, replicas.counts)
    chosen = make_policy(policy, 1.25, context)
    return Router(members, chosen, FakeTransport(), metrics, settings, None, replicas, residency)


def decisions(router: Router) -> dict[str, float]:
    return {d: c.value for d, c in router.metrics._decisions.items() if c.value}


def test_no_healthy_worker_and_panic_fail_fast() -> None:
    router = make()
    health = router.members.health
    owner_of = {
        w: next(f"m{i}" for i in range(500) if router.members.preference_list(f"m{i}")[0] == w) for w in WORKERS
    }
    for w in ("a", "b", "c"):
        health.probe(w, False)
    assert router.members.panic
    with pytest.raises(Unavailable, match="owner is out"):
        asyncio.run(router.send(owner_of["a"], "POST", "/infer"))
    assert asyncio.run(router.send(owner_of["d"], "POST", "/infer"))[1] == "d", "a model whose owner is up is served"
    health.probe("d", False)
    with pytest.raises(Unavailable, match="no healthy worker"):
        asyncio.run(router.send(owner_of["d"], "POST", "/infer"))
    assert router.transport.calls == [("d", None, None)]  # type: ignore[attr-defined]


def test_counted_failures_eject_and_overload_does_not() -> None:
    router = make(eject_after=2)
    transport: FakeTransport = router.transport  # type: ignore[assignment]
    model = next(f"m{i}" for i in range(500) if router.members.preference_list(f"m{i}")[0] == "a")
    transport.answers["a"] = "connect"
    for _ in range(2):
        assert asyncio.run(router.send(model, "POST", "/infer"))[0].status == 200
    assert router.members.health.state("a") == "ejected"
    assert "a" not in router.members.candidates(model)
    assert decisions(router) == {"retry": 2}
    assert asyncio.run(router.send(model, "POST", "/infer"))[1] == router.members.candidates(model)[0]


def test_a_busy_workers_503_with_retry_after_is_not_counted() -> None:
    router = make(eject_after=1)
    transport: FakeTransport = router.transport  # type: ignore[assignment]
    model = next(f"m{i}" for i in range(500) if router.members.preference_list(f"m{i}")[0] == "a")

    async def overloaded(worker: str) -> UpstreamResponse:
        if worker == "a":
            return UpstreamResponse(503, b"{}", {"Retry-After": "1"})
        return await transport.send(f"http://{worker}", "POST", "/infer")

    for _ in range(3):
        resp, worker = asyncio.run(router.call(model, overloaded))
        assert resp.status == 200 and worker != "a"
    assert router.members.health.state("a") == "healthy"


def test_caps_answer_overloaded_and_decisions_name_the_spill() -> None:
    router = make("affinity", RouterSettings(max_inflight=3, max_inflight_per_worker=1))
    transport: FakeTransport = router.transport  # type: ignore[assignment]
    model = "hot"
    prefs = router.members.candidates(model)
    router.residency.seen(model, prefs[2], "cpu")

    async def burst() -> list[object]:
        transport.gate = asyncio.Event()
        tasks = [asyncio.ensure_future(router.send(model, "POST", "/infer")) for _ in range(4)]
        await asyncio.sleep(0.01)
        transport.gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(burst())
    served = [r[1] for r in results if isinstance(r, tuple)]
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert len(served) == 3 and len(refused) == 1, results
    assert served[0] == prefs[0] and served[1] == prefs[2], "the spill went to the worker holding the model"
    assert decisions(router) == {"primary": 1, "resident_spill": 1, "spill": 1}
    assert router.active == 0 and sum(router.members.inflight.values()) == 0, "every slot released"


def test_the_deadline_cuts_tries_and_a_cut_try_counts_for_nothing() -> None:
    router = make(eject_after=1)
    transport: FakeTransport = router.transport  # type: ignore[assignment]
    model = next(f"m{i}" for i in range(500) if router.members.preference_list(f"m{i}")[0] == "a")
    asyncio.run(router.send(model, "POST", "/infer", deadline=time.monotonic() + 5))
    _, headers, try_timeout = transport.calls[-1]
    assert headers is not None and 4 < float(headers["X-Request-Timeout"]) <= 5
    assert try_timeout is not None and try_timeout <= 5
    transport.answers["a"], transport.delay = "timeout", 0.1  # the try ends after the deadline
    tries = len(transport.calls)
    with pytest.raises(DeadlineExceeded):
        asyncio.run(router.send(model, "POST", "/infer", deadline=time.monotonic() + 0.05))
    assert len(transport.calls) == tries + 1, "no retry after the deadline"
    assert router.members.health.state("a") == "healthy", "eject_after=1, yet the cut try counted for nothing"
    assert router.metrics.retries_denied.labels("deadline").value == 1


def test_each_answer_tells_the_replica_scaler_how_long_it_took_and_failures_do_not() -> None:
    """What a replica's trial judges by: each answer's time, retries included; a
    failure or a refusal (quick, and no sign of speed) is not counted."""
    router = make(eject_after=5)
    transport: FakeTransport = router.transport  # type: ignore[assignment]
    model = next(f"m{i}" for i in range(500) if router.members.preference_list(f"m{i}")[0] == "a")
    transport.answers["a"] = "connect"
    for _ in range(3):
        assert asyncio.run(router.send(model, "POST", "/infer"))[0].status == 200
    answers, seconds = router.replicas.answered(model)
    assert answers == 3 and seconds > 0
    transport.answers = dict.fromkeys(WORKERS, 500)
    assert asyncio.run(router.send(model, "POST", "/infer"))[0].status == 500
    transport.answers = dict.fromkeys(WORKERS, "reset")
    with pytest.raises(UpstreamUnavailable):
        asyncio.run(router.send(model, "POST", "/infer"))
    assert router.replicas.answered(model) == (answers, seconds)
    assert router.replicas.inflight[model] == 0
