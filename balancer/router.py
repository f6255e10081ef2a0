"""Send one request to the right worker, and to the next one if that fails.

The policy picks from the model's preference list; a try that fails before any
response byte (connect error, reset, per-try timeout) or answers 502/503/504
goes to the next candidate, up to ``max_retries`` more tries. Inference is
idempotent (docs/design.md, "Settled decisions"), so a retried try cannot do harm. A
model's own failure (500, 507, any 4xx) is passed through unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from balancer.errors import UpstreamError
from balancer.members import Members
from balancer.metrics import BalancerMetrics
from balancer.policy import RoutingPolicy
from balancer.transport import Transport, UpstreamResponse
from protocol.errors import AnswerTooLarge, UpstreamUnavailable

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset((502, 503, 504))


# One try at the worker with this id; raises UpstreamError when it fails before answering.
Attempt = Callable[[str], Awaitable[UpstreamResponse]]


class Router:
    def __init__(
        self,
        members: Members,
        policy: RoutingPolicy,
        transport: Transport,
        metrics: BalancerMetrics,
        max_retries: int = 2,
    ) -> None:
        self.members = members
        self.policy = policy
        self.transport = transport
        self.metrics = metrics
        self.max_retries = max_retries

    async def send(
        self,
        model: str,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[UpstreamResponse, str]:
        """One REST exchange for ``model``: the answer and the id of the worker that gave it
        (``headers``: more request headers, such as the binary extension's)."""
        transport, addresses = self.transport, self.members.addresses
        if headers:
            return await self.call(
                model, lambda w: transport.send(addresses[w].http, method, path, body, content_type, headers)
            )
        return await self.call(model, lambda w: transport.send(addresses[w].http, method, path, body, content_type))

    async def call(self, model: str, attempt: Attempt) -> tuple[UpstreamResponse, str]:
        """Try ``attempt`` on the worker the policy picks for ``model``, then on the next
        candidates while tries fail; the answer and the id of the worker that gave it.
        Transport-free: REST and gRPC fronts pass their own ``attempt``."""
        members = self.members
        candidates = members.preference_list(model)
        worker = self.policy.choose(model, candidates, members.inflight)
        decision = "primary" if worker == candidates[0] else "spill"
        tried: list[str] = []
        last: UpstreamResponse | None = None
        while True:
            members.begin(worker)
            started = time.perf_counter()
            try:
                resp = await attempt(worker)
                failure = f"status {resp.status}" if resp.status in RETRYABLE_STATUS else ""
            except UpstreamError as exc:
                if exc.kind == "too_large":  # the model's answer, not the worker's health: no retry
                    raise AnswerTooLarge("the model's answer is over the balancer's --max-upstream-answer") from None
                resp, failure = None, exc.kind
            finally:
                members.end(worker)
                self.metrics.upstream_try(worker, time.perf_counter() - started)
            if not failure:
                self.metrics.route(decision)
                return resp, worker  # type: ignore[return-value]
            if resp is not None:
                last = resp
            tried.append(worker)
            remaining = [c for c in candidates if c not in tried and c in members]
            if len(tried) > self.max_retries or not remaining:
                # Per request, so DEBUG: a down worker must not turn into a log line per request.
                log.debug("model %s: no worker answered after %d tries (last: %s)", model, len(tried), failure)
                if last is not None:
                    return last, worker
                raise UpstreamUnavailable("no worker could answer this request")
            log.debug("model %s: %s from %s, retrying on the next worker", model, failure, worker)
            worker = self.policy.choose(model, remaining, members.inflight)
            decision = "retry"
