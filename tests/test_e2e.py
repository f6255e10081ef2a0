"""End to end through the balancer: real workers, real models, real Redis."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import pytest

from balancer.ring import HashRing
from tests.conftest import ZOO_MODELS
from tests.harness import RedisServer, Server, home, request, wait_until
from tests.metrics_text import metric_sum
from tests.reference import infer_body, run_reference, sample_inputs

_seeds = itertools.count(1000)


def infer(server: Server, model: str, body: dict, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return request(server.url, "POST", f"/v2/models/{model}/infer", body, headers)


def executions(workers: list[Server], model: str) -> float:
    """Successful inferences the workers ran for a model, from their /metrics."""
    return sum(
        metric_sum(request(w.url, "GET", "/metrics").body.decode(), "affinity_requests_total", model=model, code="200")
        for w in workers
    )


@pytest.mark.parametrize("model", ZOO_MODELS)
def test_outputs_equal_direct_torch(balancer: Server, zoo: Path, model: str) -> None:
    inputs = sample_inputs(zoo, model, batch=3, seed=next(_seeds))
    resp = infer(balancer, model, infer_body(inputs, "req-1"))
    assert resp.status == 200, resp.body
    answer = resp.json()
    assert answer["id"] == "req-1"
    assert answer["model_name"] == model and answer["model_version"] == "1"
    expected = run_reference(zoo, model, [a for _, _, a in inputs])
    assert len(answer["outputs"]) == len(expected)
    for out, ref in zip(answer["outputs"], expected, strict=True):
        assert out["shape"] == list(ref.shape)
        got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_each_model_lands_on_its_home(balancer: Server, workers: list[Server], zoo: Path) -> None:
    ring = HashRing(w.id for w in workers)
    owners = set()
    for model in ZOO_MODELS:
        placed = home(balancer, model)
        assert placed in ring.preference_list(model)
        served_by = set()
        for _ in range(4):
            body = infer_body(sample_inputs(zoo, model, 1, next(_seeds)))
            resp = infer(balancer, model, body, {"Cache-Control": "no-cache, no-store"})
            assert resp.status == 200
            assert resp.headers["x-cache"] == "bypass"
            served_by.add(resp.headers["x-served-by"])
        assert served_by == {placed}
        owners |= served_by
    assert owners <= {w.id for w in workers}


def test_repeat_is_a_byte_identical_hit_that_skips_the_worker(
    balancer: Server, workers: list[Server], zoo: Path
) -> None:
    model = "cnn-01"
    inputs = sample_inputs(zoo, model, 2, next(_seeds))
    first = infer(balancer, model, infer_body(inputs, "first"))
    assert first.status == 200 and first.headers["x-cache"] == "miss"
    ran = executions(workers, model)

    again = infer(balancer, model, infer_body(inputs, "first"))
    assert again.headers["x-cache"] == "hit"
    assert again.body == first.body
    assert again.headers["x-served-by"] == first.headers["x-served-by"]

    other_id = infer(balancer, model, infer_body(inputs, "second"))
    assert other_id.headers["x-cache"] == "hit"
    assert other_id.body == first.body.replace(b'"id":"first"', b'"id":"second"')

    no_id = infer(balancer, model, infer_body(inputs))
    assert no_id.headers["x-cache"] == "hit"
    assert no_id.json() == {k: v for k, v in first.json().items() if k != "id"}
    assert executions(workers, model) == ran, "a hit must not reach a worker"

    different = infer_body(inputs, "first")
    different["inputs"][0]["data"][0] += 1.0
    changed = infer(balancer, model, different)
    assert changed.headers["x-cache"] == "miss"
    assert changed.body != first.body
    assert executions(workers, model) == ran + 1


def test_key_order_and_whitespace_do_not_change_the_key(balancer: Server, zoo: Path) -> None:
    inputs = sample_inputs(zoo, "mlp-00", 1, next(_seeds))
    body = infer_body(inputs)
    assert infer(balancer, "mlp-00", body).headers["x-cache"] == "miss"
    tensor = body["inputs"][0]
    reordered = {"inputs": [{k: tensor[k] for k in ("data", "shape", "datatype", "name")}]}
    raw = orjson.dumps(reordered, option=orjson.OPT_INDENT_2)
    assert request(balancer.url, "POST", "/v2/models/mlp-00/infer", raw).headers["x-cache"] == "hit"


def test_no_store_and_no_cache(balancer: Server, zoo: Path) -> None:
    body = infer_body(sample_inputs(zoo, "logreg-03", 1, next(_seeds)))
    assert infer(balancer, "logreg-03", body, {"Cache-Control": "no-store"}).headers["x-cache"] == "miss"
    assert infer(balancer, "logreg-03", body).headers["x-cache"] == "miss", "no-store must not store"
    assert infer(balancer, "logreg-03", body, {"Cache-Control": "no-cache"}).headers["x-cache"] == "bypass"
    assert infer(balancer, "logreg-03", body).headers["x-cache"] == "hit"


def test_identical_concurrent_requests_run_once(balancer: Server, workers: list[Server], zoo: Path) -> None:
    model = "transformer-02"
    inputs = sample_inputs(zoo, model, 4, next(_seeds))
    before = executions(workers, model)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: infer(balancer, model, infer_body(inputs, f"c{i}")), range(32)))
    assert all(a.status == 200 for a in answers)
    assert executions(workers, model) == before + 1
    bodies = {a.body.replace(f'"id":"c{i}"'.encode(), b'"id":""') for i, a in enumerate(answers)}
    assert len(bodies) == 1


def test_redis_layer_is_shared_between_balancers(
    redis_balancers: list[Server], redis_server: RedisServer, workers: list[Server], zoo: Path
) -> None:
    a, b = redis_balancers
    model = "mlp-00"
    inputs = sample_inputs(zoo, model, 2, next(_seeds))
    with redis_server.client() as client:
        keys_before = set(client.scan_iter(f"affinity:v2:{model}:*"))
        first = infer(a, model, infer_body(inputs, "via-a"))
        assert first.status == 200 and first.headers["x-cache"] == "miss"
        (key,) = wait_until(lambda: set(client.scan_iter(f"affinity:v2:{model}:*")) - keys_before)
        assert 0 < client.ttl(key) <= 3600
    ran = executions(workers, model)
    second = infer(b, model, infer_body(inputs, "via-a"))
    assert second.headers["x-cache"] == "hit"
    assert second.body == first.body
    assert executions(workers, model) == ran


def test_unknown_model_and_version_are_404_from_the_balancer(balancer: Server, workers: list[Server]) -> None:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}
    for path in ("/v2/models/no-such-model/infer", "/v2/models/mlp-00/versions/7/infer"):
        resp = request(balancer.url, "POST", path, body)
        assert resp.status == 404
        assert "unknown" in resp.json()["error"]
        assert "x-served-by" not in resp.headers


def test_metadata_health_and_index(balancer: Server, zoo: Path) -> None:
    assert request(balancer.url, "GET", "/v2/health/live").json() == {"live": True}
    assert request(balancer.url, "GET", "/v2/health/ready").json() == {"ready": True}
    server = request(balancer.url, "GET", "/v2").json()
    assert server["name"] == "affinity-serve" and "model_repository" in server["extensions"]
    meta = request(balancer.url, "GET", "/v2/models/transformer-02").json()
    assert meta["inputs"] == [{"name": "input_ids", "datatype": "INT64", "shape": [-1, 32]}]
    assert request(balancer.url, "GET", "/v2/models/transformer-02/versions/1/ready").json()["ready"] is True
    config = request(balancer.url, "GET", "/v2/models/transformer-02/config").json()
    assert config["max_batch_size"] > 0 and config["input"][0]["dims"] == [32]
    rows = request(balancer.url, "POST", "/v2/repository/index", b"{}").json()
    names = {r["name"] for r in rows}
    assert set(ZOO_MODELS) <= names
    assert all({"name", "version", "state"} <= r.keys() for r in rows)


def test_broken_model_is_a_500_and_the_service_stays_up(balancer: Server, zoo: Path) -> None:
    body = infer_body(sample_inputs(zoo, "mlp-00", 1, next(_seeds)))
    resp = infer(balancer, "broken", body)
    assert resp.status == 500
    error = resp.json()["error"]
    assert "broken" in error and "weights" in error
    assert str(zoo) not in error, "error bodies never carry paths"

    def broken_states() -> set[tuple[str, str]]:
        # the balancer answers from its cached index, refreshed on a schedule (--index-refresh 2 here)
        rows = request(balancer.url, "POST", "/v2/repository/index", b"{}").json()
        return {(r["name"], r["state"]) for r in rows if r["name"] == "broken"}

    wait_until(lambda: broken_states() == {("broken", "UNAVAILABLE")})
    assert infer(balancer, "mlp-00", body).status == 200
    assert request(balancer.url, "GET", "/v2/health/ready").status == 200


def test_balancer_metrics_count_what_happened(balancer: Server, workers: list[Server], zoo: Path) -> None:
    def scrape() -> str:
        return request(balancer.url, "GET", "/metrics").body.decode()

    model = "logreg-03"
    before = scrape()
    body = infer_body(sample_inputs(zoo, model, 1, next(_seeds)))
    assert infer(balancer, model, body).headers["x-cache"] == "miss"
    assert infer(balancer, model, body).headers["x-cache"] == "hit"
    request(balancer.url, "POST", "/v2/models/not-a-model-at-all/infer", body)
    after = scrape()

    def delta(sample: str, **labels: str) -> float:
        return metric_sum(after, sample, **labels) - metric_sum(before, sample, **labels)

    assert delta("affinity_requests_total", role="balancer", model=model, code="200", cache="miss") == 1
    assert delta("affinity_requests_total", role="balancer", model=model, code="200", cache="hit") == 1
    assert delta("affinity_requests_total", role="balancer", model="unknown", code="404") == 1
    assert "not-a-model-at-all" not in after, "made-up names never become label values"
    assert delta("affinity_request_duration_seconds_count", role="balancer", model=model) == 2
    assert delta("affinity_route_decisions_total", decision="primary") == 1
    assert delta("affinity_upstream_duration_seconds_count") == 1
    assert {f'worker="{w.id}"' in after for w in workers} == {True}, "in-flight gauge per worker"
    assert delta("affinity_replica_trials_total", outcome="reverted") == 0, "no model was hot"
    assert 'affinity_replica_trials_total{outcome="kept"}' in after
    worker_metrics = request(workers[0].url, "GET", "/metrics").body.decode()
    for text in (after, worker_metrics):  # both kinds of process give freed heap memory back and say so
        assert "affinity_heap_trims_total" in text and "affinity_heap_trimmed_bytes_total" in text
