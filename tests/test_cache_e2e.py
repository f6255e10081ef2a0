"""The response cache through real balancers, workers and Redis: shared, versioned,
never in the way."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from tests.harness import RedisCluster, RedisServer, Server, request, start_balancer, start_worker, wait_until
from tests.metrics_text import metric_sum
from tests.reference import infer_body, sample_inputs
from worker.zoo import make_model

SLOW_MLP = {"in_features": 64, "hidden": [1536, 1536, 1536], "out_features": 10}


def infer(server: Server, model: str, body: dict, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return request(server.url, "POST", f"/v2/models/{model}/infer", body, headers)


def ran(worker: Server, model: str, code: str = "200") -> float:
    text = request(worker.url, "GET", "/metrics").body.decode()
    return metric_sum(text, "affinity_requests_total", model=model, code=code)


def scrape(server: Server, sample: str, **labels: str) -> float:
    return metric_sum(request(server.url, "GET", "/metrics").body.decode(), sample, **labels)


def _new_version(root: Path, name: str, version: str, seed: int, args: dict) -> None:
    """Write ``name``/``version`` with fresh random weights (atomically, as an operator would)."""
    staging = root / ".staging"
    made = make_model(staging, name, "mlp", args, seed)
    target = root / name / version
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    made.path.rename(target)
    shutil.rmtree(staging)


@pytest.fixture
def slow_zoo(tmp_path: Path) -> Path:
    root = tmp_path / "zoo"
    make_model(root, "slow", "mlp", SLOW_MLP, seed=1)
    return root


def test_identical_requests_over_two_balancers_run_once(
    slow_zoo: Path, logdir: Path, redis_server: RedisServer
) -> None:
    """100 identical requests at once, spread over two balancers sharing Redis:
    local singleflight in each, a Redis lock between them: one inference."""
    worker = start_worker(slow_zoo, logdir).wait_ready()
    # Generous Redis and lock timeouts: on a loaded machine a 100 ms Redis call may time
    # out, and the cache then (rightly) fails open, which would be a second inference.
    flags = ("--redis-url", redis_server.url, "--redis-timeout", "2", "--cache-lock-timeout", "60")
    balancers = [start_balancer([worker], logdir, *flags) for _ in range(2)]
    try:
        for b in balancers:
            b.wait_ready()
        body = infer_body(sample_inputs(slow_zoo, "slow", 1, seed=77), "same")
        before = ran(worker, "slow")
        start = threading.Barrier(50)

        def one(i: int) -> tuple[int, str]:
            if i < 50:
                start.wait(10)
            resp = infer(balancers[i % 2], "slow", body)
            return resp.status, resp.headers.get("x-cache", "")

        with ThreadPoolExecutor(50) as pool:
            outcomes = list(pool.map(one, range(100)))
        assert [s for s, _ in outcomes] == [200] * 100
        assert ran(worker, "slow") - before == 1, "one inference for 100 identical requests"
        remote = sum(scrape(b, "affinity_cache_coalesced_total", scope="remote") for b in balancers)
        hits = sum(scrape(b, "affinity_cache_hits_total", layer="redis") for b in balancers)
        assert remote + hits >= 1, "the second balancer took the answer the first computed"
    finally:
        for s in [*balancers, worker]:
            s.proc.stop()


def test_a_new_version_or_new_weights_are_never_answered_from_an_old_entry(slow_zoo: Path, logdir: Path) -> None:
    args = {"in_features": 64, "hidden": [32], "out_features": 10}
    _new_version(slow_zoo, "m", "1", 1, args)
    # Rescans and index refreshes each second (10 s by default): the test waits for both twice.
    worker = start_worker(slow_zoo, logdir, "--rescan-interval", "1").wait_ready()
    balancer = start_balancer([worker], logdir, "--index-refresh", "1").wait_ready()
    try:
        body = infer_body(sample_inputs(slow_zoo, "m", 1, seed=5))
        first = infer(balancer, "m", body)
        assert (first.status, first.headers["x-cache"], first.json()["model_version"]) == (200, "miss", "1")
        assert infer(balancer, "m", body).headers["x-cache"] == "hit"

        _new_version(slow_zoo, "m", "2", 2, args)
        wait_until(lambda: {r["version"] for r in request(balancer.url, "POST", "/v2/repository/index", b"{}").json()}
                   == {"1", "2"}, 15)  # fmt: skip
        second = infer(balancer, "m", body)
        assert (second.headers["x-cache"], second.json()["model_version"]) == ("miss", "2")
        assert second.json()["outputs"] != first.json()["outputs"]
        assert infer(balancer, "m/versions/1", body).body == first.body, "version 1 keeps its own entry"

        old_sha = _sha(balancer, "m", "2")
        _new_version(slow_zoo, "m", "2", 3, args)  # same version, other weights
        wait_until(lambda: _sha(balancer, "m", "2") != old_sha, 15)
        third = infer(balancer, "m", body)
        assert third.headers["x-cache"] == "miss", "changed weights make another key"
        assert third.json()["outputs"] != second.json()["outputs"], "and the worker runs the new weights"
    finally:
        balancer.proc.stop()
        worker.proc.stop()


def _sha(balancer: Server, name: str, version: str) -> str:
    rows = request(balancer.url, "POST", "/v2/repository/index", b"{}").json()
    return next(str(r["sha256"]) for r in rows if r["name"] == name and r["version"] == version)


def test_redis_killed_mid_run_fails_nothing_and_the_cache_comes_back(zoo: Path, logdir: Path) -> None:
    redis = RedisServer(logdir).start()
    worker = start_worker(zoo, logdir).wait_ready()
    balancer = start_balancer(
        [worker], logdir, "--redis-url", redis.url, "--redis-breaker-cooldown", "1", "--redis-timeout", "0.05"
    ).wait_ready()
    try:
        statuses: list[int] = []
        for i in range(160):
            if i == 60:
                redis.stop()
            # Every other request repeats an earlier one (a local hit); the rest go to Redis first.
            seed = i // 2 if i % 2 else 10_000 + i
            statuses.append(infer(balancer, "mlp-00", infer_body(sample_inputs(zoo, "mlp-00", 1, seed=seed))).status)
        assert statuses == [200] * 160, "Redis going away fails no request"
        assert scrape(balancer, "affinity_cache_redis_errors_total") > 0

        redis.start()
        fresh = infer_body(sample_inputs(zoo, "mlp-00", 1, seed=999))

        def stored_again() -> bool:
            infer(balancer, "mlp-00", fresh, {"Cache-Control": "no-cache"})
            with redis.client() as client:
                return client.dbsize() > 0

        wait_until(stored_again, 20, 0.5)
        assert scrape(balancer, "affinity_cache_breaker_state", state="closed") == 1
    finally:
        balancer.proc.stop()
        worker.proc.stop()
        redis.stop()


def test_a_hostile_entry_in_redis_is_a_miss_and_never_becomes_headers(
    redis_balancers: list[Server], redis_server: RedisServer, zoo: Path
) -> None:
    a, b = redis_balancers
    body = infer_body(sample_inputs(zoo, "cnn-01", 1, seed=4242))
    with redis_server.client() as client:
        before = set(client.scan_iter("affinity:v2:cnn-01:*"))
        first = infer(a, "cnn-01", body)
        assert first.headers["x-cache"] == "miss"
        wait_until(lambda: set(client.scan_iter("affinity:v2:cnn-01:*")) - before)
        (key,) = set(client.scan_iter("affinity:v2:cnn-01:*")) - before
        client.set(key, b'AF2\n["w:1\\r\\nX-Evil: yes","application/json",0]\n{"outputs":[]}')
    invalid_before = scrape(b, "affinity_cache_invalid_entries_total")
    second = infer(b, "cnn-01", body)
    assert second.status == 200 and second.headers["x-cache"] == "miss"
    assert "x-evil" not in second.headers
    assert second.json()["outputs"] == first.json()["outputs"]
    assert scrape(b, "affinity_cache_invalid_entries_total") > invalid_before, "refused and counted"


def test_what_must_not_be_stored_is_not(balancer: Server, workers: list[Server], zoo: Path, logdir: Path) -> None:
    def total(model: str, code: str) -> float:
        return sum(ran(w, model, code) for w in workers)

    body = infer_body(sample_inputs(zoo, "mlp-00", 1, seed=3131))
    for model, code, state in (("mlp-nondet", "200", "bypass"), ("broken", "500", "miss")):
        before = total(model, code)
        answers = [infer(balancer, model, body) for _ in range(2)]
        assert [a.headers["x-cache"] for a in answers] == [state, state]
        assert total(model, code) == before + 2, f"{model}: both requests reached a worker"
    assert scrape(balancer, "affinity_cache_skips_total", reason="not_cacheable") >= 2
    assert scrape(balancer, "affinity_cache_skips_total", reason="not_ok") >= 2

    tiny = start_balancer(workers, logdir, "--cache-max-entry", "64").wait_ready()
    try:
        assert [infer(tiny, "mlp-00", body).headers["x-cache"] for _ in range(2)] == ["miss", "miss"]
        assert scrape(tiny, "affinity_cache_skips_total", reason="too_large") == 2
    finally:
        tiny.proc.stop()


def test_the_cache_size_bounds_the_entries_memory_not_only_their_bodies(
    workers: list[Server], zoo: Path, logdir: Path
) -> None:
    """Each entry is counted with its bookkeeping (about 0.6 KiB besides the body), so
    a small budget holds fewer answers than its bytes of bodies would suggest; the
    used bytes stay within the budget and are published."""
    small = start_balancer(workers, logdir, "--cache-size", "8KiB").wait_ready()
    try:
        bodies = []
        for seed in range(40):  # the answers' bodies alone would fill it
            answer = infer(small, "mlp-00", infer_body(sample_inputs(zoo, "mlp-00", 1, seed=7000 + seed)))
            assert answer.headers["x-cache"] == "miss"
            bodies.append(len(answer.body))
        used = scrape(small, "affinity_cache_memory_bytes", kind="used")
        entries = scrape(small, "affinity_cache_entries")
        assert scrape(small, "affinity_cache_memory_bytes", kind="capacity") == 8 << 10
        assert 0 < used <= 8 << 10
        assert sum(bodies) > 8 << 10
        assert 0 < entries <= (8 << 10) // (min(bodies) + 512), "fewer answers than their bodies' bytes would allow"
        assert used >= entries * (min(bodies) + 512), "each entry counted with its overhead"
    finally:
        small.proc.stop()


@pytest.mark.skipif(not RedisCluster.available(), reason="needs redis-server and redis-cli for a real cluster")
def test_a_redis_cluster_is_shared_through_any_node(workers: list[Server], zoo: Path, logdir: Path) -> None:
    cluster = RedisCluster(logdir).start()
    balancers: list[Server] = []
    try:
        for node in cluster.nodes[:2]:  # each balancer enters the cluster through another node
            url = f"redis+cluster://127.0.0.1:{node.port}"
            balancers.append(start_balancer(workers, logdir, "--redis-url", url).wait_ready())
        answers = []
        for seed in range(12):
            body = infer_body(sample_inputs(zoo, "logreg-03", 1, seed=seed + 500))
            first = infer(balancers[0], "logreg-03", body)
            wait_until(lambda b=body: infer(balancers[1], "logreg-03", b).headers["x-cache"] == "hit", 10)
            answers.append(first.headers["x-cache"])
        assert answers == ["miss"] * 12
        spread = [len(cluster.keys_on(n, "affinity:v2:*")) for n in cluster.nodes]
        assert sum(spread) == 12 and sum(1 for n in spread if n) >= 2, f"entries spread over the slots: {spread}"
    finally:
        for b in balancers:
            b.proc.stop()
        cluster.stop()


def test_ttl_per_model_from_its_config(tmp_path: Path, logdir: Path, redis_server: RedisServer) -> None:
    root = tmp_path / "zoo"
    made = make_model(root, "short", "mlp", {"in_features": 64, "hidden": [16], "out_features": 4}, seed=3)
    config = orjson.loads((made.path / "config.json").read_bytes())
    (made.path / "config.json").write_bytes(orjson.dumps({**config, "cache_ttl": 120}))
    worker = start_worker(root, logdir).wait_ready()
    balancer = start_balancer([worker], logdir, "--redis-url", redis_server.url).wait_ready()
    try:
        body = infer_body(sample_inputs(root, "short", 1, seed=1))
        assert infer(balancer, "short", body).headers["x-cache"] == "miss"
        with redis_server.client() as client:
            wait_until(lambda: list(client.scan_iter("affinity:v2:short:*")))
            (key,) = client.scan_iter("affinity:v2:short:*")
            assert 100 < client.ttl(key) <= 120, "the model's own TTL, not the balancer's default of 3600"
    finally:
        balancer.proc.stop()
        worker.proc.stop()


def test_large_bodies_are_keyed_by_their_tensors_off_the_event_loop(tmp_path: Path, logdir: Path) -> None:
    """Over 128 KiB a body is keyed in the key process: the same tensors, written flat
    or nested, are one entry; other tensors are another."""
    import numpy as np

    root = tmp_path / "zoo"
    make_model(root, "wide", "mlp", {"in_features": 4096, "hidden": [16], "out_features": 4}, seed=2)
    worker = start_worker(root, logdir).wait_ready()
    balancer = start_balancer([worker], logdir).wait_ready()
    try:
        data = np.random.default_rng(3).standard_normal((40, 4096)).astype(np.float32)

        def body(values: object, request_id: str) -> bytes:
            tensor = {"name": "input", "datatype": "FP32", "shape": [40, 4096], "data": values}
            return orjson.dumps({"id": request_id, "inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY)

        nested, flat = body(data, "a"), body(data.ravel(), "b")
        assert len(nested) > 128 << 10
        first = request(balancer.url, "POST", "/v2/models/wide/infer", nested)
        assert (first.status, first.headers["x-cache"]) == (200, "miss")
        again = request(balancer.url, "POST", "/v2/models/wide/infer", flat)
        assert again.headers["x-cache"] == "hit", "flat or nested, the same tensor"
        assert again.body == first.body.replace(b'"id":"a"', b'"id":"b"')
        other = data.copy()
        other[39, 4095] += 1
        changed = request(balancer.url, "POST", "/v2/models/wide/infer", body(other, "c"))
        assert changed.headers["x-cache"] == "miss"
    finally:
        balancer.proc.stop()
        worker.proc.stop()
