"""Send one request to the right worker, and to the next one if that fails.

    admission  no admitted worker: 503; panic (under half admitted) and the
               model's owner out: 503 at once; over the total or per-worker
               in-flight cap: 503 Overloaded (all with Retry-After)
    pick       the policy, from the model's candidates (admitted, ring order)
    try        ``attempt(worker)``; its outcome feeds health and residency
    retry      on a connect error, a reset, a per-try timeout or 502/503/504,
               on a worker not tried yet, while tries remain
               (``max_retries``), the retry budget allows, and the request's
               deadline has not passed

What counts against a worker (and may get it ejected): connect errors, resets
before any response byte, per-try timeouts, 502, 504 and 503 without
``Retry-After``. A 503 *with* ``Retry-After`` is a worker shedding load: retried
elsewhere, never counted. A model's own failure (500, 507, any 4xx) is passed
through unchanged and counts for nothing. Nor does a failure that the
request's own deadline caused (a try cut short by it, a worker's 504 once it
has passed): a client with a tight deadline must not get workers ejected.
Inference is idempotent (docs/design.md, "Settled decisions"), so a retried
try cannot do harm.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from balancer.budget import RetryBudget
from balancer.errors import UpstreamError
from balancer.members import Members
from balancer.metrics import BalancerMetrics
from balancer.policy import RoutingPolicy
from balancer.replicas import ReplicaScaler
from balancer.residency import Residency
from balancer.transport import Transport, UpstreamResponse
from protocol.deadline import REQUEST_TIMEOUT_HEADER
from protocol.errors import AnswerTooLarge, DeadlineExceeded, Overloaded, Unavailable, UpstreamUnavailable

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset((502, 503, 504))


# One try at the worker with this id; raises UpstreamError when it fails before answering.
Attempt = Callable[[str], Awaitable[UpstreamResponse]]


@dataclass(frozen=True, slots=True)
class RouterSettings:
    max_retries: int = 2
    try_timeout: float = 60.0
    max_inflight: int = 4096  # requests in flight through this balancer
    max_inflight_per_worker: int = 256


class Router:
    def __init__(
        self,
        members: Members,
        policy: RoutingPolicy,
        transport: Transport,
        metrics: BalancerMetrics,
        settings: RouterSettings | None = None,
        budget: RetryBudget | None = None,
        replicas: ReplicaScaler | None = None,
        residency: Residency | None = None,
    ) -> None:
        self.members = members
        self.policy = policy
        self.transport = transport
        self.metrics = metrics
        self.settings = settings or RouterSettings()
        self.budget = budget or RetryBudget()
        self.replicas = replicas or ReplicaScaler()
        self.residency = residency or Residency()
        self.active = 0  # requests in flight through this router

    async def send(
        self,
        model: str,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
        deadline: float | None = None,
    ) -> tuple[UpstreamResponse, str]:
        """One REST exchange for ``model``: the answer and the id of the worker that
        gave it (``headers``: more request headers, such as the binary extension's).
        With a ``deadline`` (``time.monotonic()`` seconds), each try is cut at it and
        tells the worker how long it has left."""
        transport, addresses, try_timeout = self.transport, self.members.addresses, self.settings.try_timeout
        if deadline is None:
            if headers:
                return await self.call(
                    model, lambda w: transport.send(addresses[w].http, method, path, body, content_type, headers)
                )
            return await self.call(model, lambda w: transport.send(addresses[w].http, method, path, body, content_type))

        def attempt(worker: str) -> Awaitable[UpstreamResponse]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded("the request's deadline passed")
            sent = (
                {**headers, REQUEST_TIMEOUT_HEADER: f"{left:.3f}"}
                if headers
                else {REQUEST_TIMEOUT_HEADER: f"{left:.3f}"}
            )
            return transport.send(
                addresses[worker].http, method, path, body, content_type, sent, min(left, try_timeout)
            )

        return await self.call(model, attempt, deadline)

    def _admit(self, model: str) -> tuple[str, ...]:
        members = self.members
        candidates = members.candidates(model)
        if not candidates:
            raise Unavailable("no healthy worker is available")
        if members.panic and members.owner_out(model):
            raise Unavailable("too few workers are healthy and this model's owner is out: try again later")
        if self.active >= self.settings.max_inflight:
            self.metrics.shed("total")
            raise Overloaded("the balancer is at its in-flight limit: try again later")
        return candidates

    def _pick(self, model: str, candidates: tuple[str, ...] | list[str]) -> str:
        loads = self.members.loads
        worker = self.policy.choose(model, candidates, loads)
        limit = self.settings.max_inflight_per_worker
        if loads.get(worker, 0) >= limit:
            worker = next((w for w in candidates if loads.get(w, 0) < limit), "")
            if not worker:
                self.metrics.shed("worker")
                raise Overloaded("every worker for this model is at its in-flight limit: try again later")
        return worker

    def _decision(self, model: str, candidates: tuple[str, ...], worker: str) -> str:
        if worker == candidates[0]:
            return "primary"
        replicas = self.replicas.counts.get(model)
        if replicas is not None and worker in candidates[:replicas]:
            return "primary"
        return "resident_spill" if self.residency.holds(model, worker) else "spill"

    async def call(self, model: str, attempt: Attempt, deadline: float | None = None) -> tuple[UpstreamResponse, str]:
        """Try ``attempt`` on the worker the policy picks for ``model``, then on the next
        candidates while tries fail; the answer and the id of the worker that gave it.
        Transport-free: REST and gRPC fronts pass their own ``attempt`` (which should
        bound itself by ``deadline``, a ``time.monotonic()`` time, when one is given)."""
        candidates = self._admit(model)
        worker = self._pick(model, candidates)
        decision = self._decision(model, candidates, worker)
        members, health, metrics = self.members, self.members.health, self.metrics
        self.budget.request()
        self.replicas.begin(model)
        begun = time.perf_counter()
        self.active += 1
        tried: list[str] = []
        last: UpstreamResponse | None = None
        answered = False  # a 200 from the model: the only outcome whose time a replica trial weighs
        try:
            while True:
                members.begin(worker)
                started = time.perf_counter()
                try:
                    resp = await attempt(worker)
                    status = resp.status
                    failure = f"status_{status}" if status in RETRYABLE_STATUS else ""
                except UpstreamError as exc:
                    if exc.kind == "too_large":  # the model's answer, not the worker's health: no retry
                        raise AnswerTooLarge(
                            "the model's answer is over the balancer's --max-upstream-answer"
                        ) from None
                    resp, status, failure = None, 0, exc.kind
                finally:
                    members.end(worker)
                    metrics.upstream_try(worker, time.perf_counter() - started)
                if not failure:
                    health.success(worker)
                    if status == 200 and not self.residency.holds(model, worker):
                        self.residency.seen(model, worker, resp.headers.get("X-Model-Source"))  # type: ignore[union-attr]
                    metrics.route(decision)
                    answered = status == 200
                    return resp, worker  # type: ignore[return-value]
                expired = deadline is not None and time.monotonic() >= deadline
                if resp is not None:
                    last = resp
                if not expired and (status != 503 or "Retry-After" not in resp.headers):  # type: ignore[union-attr]
                    health.failure(worker)
                tried.append(worker)
                if expired:
                    metrics.retry_denied("deadline")
                    if last is not None and last.status == 504:
                        return last, worker
                    raise DeadlineExceeded("the request's deadline passed before a worker answered")
                remaining = [c for c in members.candidates(model) if c not in tried]
                if len(tried) > self.settings.max_retries or not remaining:
                    # Per request, so DEBUG: a down worker must not turn into a log line per request.
                    log.debug("model %s: no worker answered after %d tries (last: %s)", model, len(tried), failure)
                    return self._give_up(last, worker)
                if not self.budget.try_retry():
                    metrics.retry_denied("budget")
                    return self._give_up(last, worker)
                log.debug("model %s: %s from %s, retrying on the next worker", model, failure, worker)
                metrics.retry(failure)
                worker = self._pick(model, remaining)
                decision = "retry"
        finally:
            self.active -= 1
            self.replicas.end(model, time.perf_counter() - begun if answered else None)

    @staticmethod
    def _give_up(last: UpstreamResponse | None, worker: str) -> tuple[UpstreamResponse, str]:
        if last is not None:
            return last, worker
        raise UpstreamUnavailable("no worker could answer this request")
