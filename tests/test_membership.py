"""Worker identity: the ring is built from the ids workers report, never from URLs."""

from __future__ import annotations

from pathlib import Path

import orjson

from balancer.ring import HashRing
from tests.conftest import ZOO_MODELS
from tests.harness import Server, request, start_balancer, start_worker
from tests.reference import infer_body, sample_inputs


def _served_by(balancer: Server, zoo: Path, model: str, seed: int) -> str:
    body = infer_body(sample_inputs(zoo, model, 1, seed))
    resp = request(balancer.url, "POST", f"/v2/models/{model}/infer", body, {"Cache-Control": "no-cache"})
    assert resp.status == 200, resp.body
    return resp.headers["x-served-by"]


def test_the_balancer_learns_worker_ids_from_the_workers(zoo: Path, logdir: Path) -> None:
    workers = [start_worker(zoo, logdir, "--worker-id", name) for name in ("alpha", "beta")]
    balancers: list[Server] = []
    try:
        for w in workers:
            w.wait_ready()
        assert orjson.loads(request(workers[0].url, "GET", "/v2").body)["worker_id"] == "alpha"
        # Two balancers reach the same workers by different addresses: same ids, same ring.
        balancers.append(start_balancer(workers, logdir, "--policy", "consistent").wait_ready())
        by_name = [Server(w.proc, w.url.replace("127.0.0.1", "localhost")) for w in workers]
        balancers.append(start_balancer(by_name, logdir, "--policy", "consistent").wait_ready())
        ring = HashRing(["alpha", "beta"])
        clusters = [request(b.url, "GET", "/admin/cluster").json() for b in balancers]
        homes = [{m: info["home"] for m, info in c["models"].items()} for c in clusters]
        assert homes[0] == homes[1], "same ids, same ring, same homes"
        for seed, model in enumerate(ZOO_MODELS):
            home = clusters[0]["models"][model]["home"]
            assert home in ring.preference_list(model), "a home is one of the model's ring candidates"
            assert {_served_by(b, zoo, model, seed) for b in balancers} == {home}
    finally:
        for s in balancers + workers:
            s.proc.stop()
