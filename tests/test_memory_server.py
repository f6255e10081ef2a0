"""The memory manager through the server: real worker and balancer processes,
real zoo models, budgets that force paging; asserted on answers, headers,
metrics, /admin/memory, the index and the statistics (mechanisms, never times)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import pytest

from protocol.grpc_service import inference_pb2 as pb
from protocol.grpc_service.inference_pb2_grpc import GRPCInferenceServiceStub
from tests.harness import Server, private_cluster, request, start_balancer, start_worker, wait_until
from tests.memory_fixtures import sizes
from tests.metrics_text import metric_sum
from tests.reference import infer_body, run_reference, sample_inputs
from worker.zoo import args_for, make_model, make_zoo

TOKEN = "s3cret-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _infer(server: Server, zoo: Path, model: str, seed: int, headers: dict[str, str] | None = None) -> Any:
    inputs = sample_inputs(zoo, model, 2, seed)
    resp = request(server.url, "POST", f"/v2/models/{model}/infer", infer_body(inputs), headers)
    return resp, [a for _, _, a in inputs]


def _check_answer(resp: Any, zoo: Path, model: str, inputs: list[np.ndarray]) -> None:
    assert resp.status == 200, resp.body
    out = resp.json()["outputs"][0]
    want = run_reference(zoo, model, inputs)[0]
    got = np.asarray(out["data"], dtype=want.dtype).reshape(out["shape"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _memory(server: Server, headers: dict[str, str] | None = None) -> Any:
    resp = request(server.url, "GET", "/admin/memory", headers=headers)
    assert resp.status == 200, resp.body
    return resp.json()


def _tier(report: Any, name: str) -> Any:
    return next(t for t in report["tiers"] if t["tier"] == name)


@pytest.fixture(scope="module")
def even_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight models of 256-512 KiB: a budget of a quarter of the zoo holds any one of them."""
    root = tmp_path_factory.mktemp("even-zoo")
    make_zoo(root, count=8, min_size=256 << 10, max_size=512 << 10)
    return root


def test_a_cluster_holding_half_the_zoo_answers_every_model(even_zoo: Path, logdir: Path) -> None:
    size = sizes(even_zoo)
    budget = sum(size.values()) // 4  # per worker: the two hold about half the zoo
    assert budget >= max(size.values())
    extra = ("--cpu-memory", str(budget))
    with private_cluster(even_zoo, logdir, 2, "--policy", "consistent", worker_args=extra) as (workers, balancer):
        for round_ in range(2):  # the second round finds most models evicted
            for n, model in enumerate(sorted(size)):
                resp, inputs = _infer(balancer, even_zoo, model, seed=100 * round_ + n)
                _check_answer(resp, even_zoo, model, inputs)
        loads = evictions = 0.0
        for worker in workers:
            text = request(worker.url, "GET", "/metrics").body.decode()
            loads += metric_sum(text, "affinity_model_loads_total", tier="disk")
            evictions += metric_sum(text, "affinity_model_evictions_total", tier="cpu")
            assert metric_sum(text, "affinity_memory_bytes", tier="cpu", kind="budget") == budget
            assert metric_sum(text, "affinity_memory_bytes", tier="cpu", kind="used") <= budget
            cpu = _tier(_memory(worker), "cpu")
            assert cpu["budget"] == budget and cpu["used"] <= budget
            assert cpu["used"] == sum(m["bytes"] for m in cpu["models"])
        assert loads > len(size), "models evicted in the first round were loaded again"
        assert evictions >= loads - len(size) - 2, "every reload made room by evicting"
        assert evictions > 0


def test_fifty_concurrent_requests_for_a_cold_model_cause_one_load(zoo: Path, logdir: Path) -> None:
    worker = start_worker(zoo, logdir).wait_ready()
    try:
        model = "cnn-01"
        bodies = [infer_body(sample_inputs(zoo, model, 1, seed)) for seed in range(50)]
        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(lambda b: request(worker.url, "POST", f"/v2/models/{model}/infer", b), bodies))
        assert [a.status for a in answers] == [200] * 50
        assert {a.headers["x-model-source"] for a in answers} <= {"disk", "cpu"}
        assert "disk" in {a.headers["x-model-source"] for a in answers}
        text = request(worker.url, "GET", "/metrics").body.decode()
        assert metric_sum(text, "affinity_model_loads_total") == 1
        assert metric_sum(text, "affinity_model_load_seconds_count") == 1
        assert metric_sum(text, "affinity_requests_total", model=model, code="200") == 50
        [stats] = request(worker.url, "GET", f"/v2/models/{model}/stats").json()["model_stats"]
        assert stats["load_stats"]["count"] == 1 and stats["inference_stats"]["success"]["count"] == 50
        assert request(worker.url, "POST", f"/v2/models/{model}/infer", bodies[0]).headers["x-model-source"] == "cpu"
        [row] = [r for r in request(worker.url, "POST", "/v2/repository/index", b"{}").json() if r["name"] == model]
        assert (row["state"], row["resident"], row["tier"]) == ("READY", True, "cpu")
        assert "process warm-up" in worker.proc.log.read_text(), "the process warmed up before it was ready"
    finally:
        worker.proc.stop()


def test_a_model_larger_than_every_budget_is_507_and_the_worker_keeps_serving(zoo: Path, logdir: Path) -> None:
    size = sizes(zoo)
    budget = size["logreg-03"] - 1  # everything else fits
    worker = start_worker(zoo, logdir, "--cpu-memory", str(budget), "--device", "stand-in", "--gpu-memory", "1000")
    worker.wait_ready()
    try:
        resp, _ = _infer(worker, zoo, "logreg-03", seed=1)
        assert resp.status == 507
        message = resp.json()["error"]
        assert "logreg-03" in message and "more than any memory budget" in message and str(zoo) not in message
        resp, inputs = _infer(worker, zoo, "mlp-00", seed=2)
        _check_answer(resp, zoo, "mlp-00", inputs)
        assert request(worker.url, "GET", "/v2/health/ready").status == 200
        rows = {r["name"]: r for r in request(worker.url, "POST", "/v2/repository/index", b"{}").json()}
        assert rows["logreg-03"]["state"] == "UNAVAILABLE" and "memory budget" in rows["logreg-03"]["reason"]
        assert rows["mlp-00"]["state"] == "READY"
    finally:
        worker.proc.stop()


def test_the_gpu_tier_serves_through_the_server_on_the_stand_in_device(zoo: Path, logdir: Path) -> None:
    size = sizes(zoo)
    gpu = size["transformer-02"] + size["cnn-01"]  # mlp, the least recently used, makes room for cnn
    args = ("--device", "stand-in", "--gpu-memory", str(gpu), "--cpu-memory", "64MiB")
    worker = start_worker(zoo, logdir, *args).wait_ready()
    try:
        sources = []
        for n, model in enumerate(("transformer-02", "mlp-00", "transformer-02", "cnn-01")):
            resp, inputs = _infer(worker, zoo, model, seed=n)
            _check_answer(resp, zoo, model, inputs)
            sources.append(resp.headers["x-model-source"])
        assert sources == ["disk", "disk", "gpu", "disk"]
        report = _memory(worker)
        assert report["device"] == "stand-in"
        gpu_tier, cpu_tier = _tier(report, "gpu"), _tier(report, "cpu")
        assert gpu_tier["budget"] == gpu and gpu_tier["used"] <= gpu
        assert {m["name"] for m in gpu_tier["models"]} == {"transformer-02", "cnn-01"}
        assert [m["name"] for m in cpu_tier["models"]] == ["mlp-00"], "the GPU's victim went down, not away"
        text = request(worker.url, "GET", "/metrics").body.decode()
        assert metric_sum(text, "affinity_model_evictions_total", tier="gpu") == 1
        assert metric_sum(text, "affinity_memory_bytes", tier="gpu", kind="budget") == gpu
        [stats] = request(worker.url, "GET", "/v2/models/cnn-01/stats").json()["model_stats"]
        assert stats["memory_usage"] == [{"type": "GPU", "id": 0, "byte_size": size["cnn-01"]}]
    finally:
        worker.proc.stop()


def test_load_and_unload_routes_take_the_admin_token(zoo: Path, logdir: Path) -> None:
    worker = start_worker(zoo, logdir, "--admin-token", TOKEN).wait_ready()
    try:
        load = "/v2/repository/models/mlp-00/load"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            resp = request(worker.url, "POST", load, b"", headers)
            assert resp.status == 401 and resp.headers["www-authenticate"] == "Bearer"
            assert request(worker.url, "POST", "/v2/repository/models/mlp-00/unload", b"", headers).status == 401
            assert request(worker.url, "GET", "/admin/memory", headers=headers).status == 401
        assert not any(m["name"] == "mlp-00" for m in _tier(_memory(worker, AUTH), "cpu")["models"])

        resp = request(worker.url, "POST", load, {"parameters": {"pinned": True}}, AUTH)
        assert resp.status == 200, resp.body
        assert {"name": "mlp-00", "version": "1", "state": "READY", "tier": "cpu"}.items() <= resp.json().items()
        [mlp] = [m for m in _tier(_memory(worker, AUTH), "cpu")["models"] if m["name"] == "mlp-00"]
        assert mlp["pinned"] is True and mlp["refs"] == 0
        resp, inputs = _infer(worker, zoo, "mlp-00", seed=3)
        assert resp.headers["x-model-source"] == "cpu", "loaded before the first request"
        _check_answer(resp, zoo, "mlp-00", inputs)

        resp = request(worker.url, "POST", "/v2/repository/models/mlp-00/unload", b"{}", AUTH)
        assert resp.json() == {"name": "mlp-00", "unloaded": ["1"]}
        assert not any(m["name"] == "mlp-00" for m in _tier(_memory(worker, AUTH), "cpu")["models"])
        [row] = [r for r in request(worker.url, "POST", "/v2/repository/index", b"{}").json() if r["name"] == "mlp-00"]
        assert (row["resident"], row["tier"]) == (False, "disk")
        resp, _ = _infer(worker, zoo, "mlp-00", seed=4)
        assert resp.headers["x-model-source"] == "disk", "an unloaded model loads again on its next request"

        assert request(worker.url, "POST", "/v2/repository/models/no-such/load", b"", AUTH).status == 404
        assert request(worker.url, "POST", "/v2/repository/models/no-such/unload", b"", AUTH).status == 404
        bad = {"parameters": {"config": "{}"}}
        resp = request(worker.url, "POST", load, bad, AUTH)
        assert resp.status == 400 and "config" in resp.json()["error"]
        assert request(worker.url, "POST", "/v2/repository/models/broken/load", b"", AUTH).status == 500
    finally:
        worker.proc.stop()


def _resident(worker: Server, model: str) -> list[dict[str, Any]]:
    return [m for m in _tier(_memory(worker, AUTH), "cpu")["models"] if m["name"] == model]


def _grpc_status(call: Any, message: Any, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    try:
        call(message, timeout=30, metadata=metadata)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_grpc_repository_load_and_unload_work_as_rest_on_worker_and_balancer(zoo: Path, logdir: Path) -> None:
    """RepositoryModelLoad and RepositoryModelUnload: the admin token as metadata, the
    same parameters as REST, the same errors as gRPC statuses; through the balancer
    they reach the model's home worker."""
    worker = start_worker(zoo, logdir, "--admin-token", TOKEN).wait_ready()
    balancer = start_balancer([worker], logdir, "--admin-token", TOKEN).wait_ready()
    token = (("authorization", f"Bearer {TOKEN}"),)
    try:
        for target, model in ((worker.grpc, "mlp-00"), (balancer.grpc, "cnn-01")):
            assert target is not None
            with grpc.insecure_channel(target) as channel:
                stub = GRPCInferenceServiceStub(channel)
                pinned = pb.RepositoryModelLoadRequest(model_name=model)
                pinned.parameters["pinned"].bool_param = True
                for metadata in ((), (("authorization", "Bearer wrong"),)):
                    assert _grpc_status(stub.RepositoryModelLoad, pinned, metadata) == grpc.StatusCode.UNAUTHENTICATED
                    unload = pb.RepositoryModelUnloadRequest(model_name=model)
                    assert _grpc_status(stub.RepositoryModelUnload, unload, metadata) == grpc.StatusCode.UNAUTHENTICATED
                assert not _resident(worker, model), "nothing loaded without the token"

                assert _grpc_status(stub.RepositoryModelLoad, pinned, token) == grpc.StatusCode.OK
                [row] = _resident(worker, model)
                assert row["pinned"] is True
                resp, inputs = _infer(worker, zoo, model, seed=11)
                assert resp.headers["x-model-source"] == "cpu", "loaded before the first request"
                _check_answer(resp, zoo, model, inputs)

                unload = pb.RepositoryModelUnloadRequest(model_name=model)
                assert _grpc_status(stub.RepositoryModelUnload, unload, token) == grpc.StatusCode.OK
                assert not _resident(worker, model)

                missing = pb.RepositoryModelLoadRequest(model_name="no-such")
                assert _grpc_status(stub.RepositoryModelLoad, missing, token) == grpc.StatusCode.NOT_FOUND
                config = pb.RepositoryModelLoadRequest(model_name=model)
                config.parameters["config"].string_param = "{}"
                assert _grpc_status(stub.RepositoryModelLoad, config, token) == grpc.StatusCode.INVALID_ARGUMENT
                raw = pb.RepositoryModelLoadRequest(model_name=model)
                raw.parameters["version"].bytes_param = b"1"
                assert _grpc_status(stub.RepositoryModelLoad, raw, token) == grpc.StatusCode.INVALID_ARGUMENT
                assert not _resident(worker, model), "a refused load loads nothing"
    finally:
        balancer.proc.stop()
        worker.proc.stop()


def test_admin_memory_reports_tiers_beside_rss_and_pss(zoo: Path, logdir: Path) -> None:
    worker = start_worker(zoo, logdir, "--cpu-memory", "32MiB", "--eviction", "gds").wait_ready()
    try:
        _infer(worker, zoo, "transformer-02", seed=5)
        report = _memory(worker)  # no token configured: open (the worker listens on loopback)
        assert set(report) == {"policy", "tiers", "remote", "device", "process"}
        assert (report["policy"], report["remote"], report["device"]) == ("gds", None, None)
        assert [t["tier"] for t in report["tiers"]] == ["cpu"], "no GPU tier without a device"
        cpu = report["tiers"][0]
        assert set(cpu) == {"tier", "budget", "used", "reserved", "models"}
        assert cpu["budget"] == 32 << 20 and cpu["reserved"] == 0
        [model] = cpu["models"]
        assert set(model) == {"name", "version", "bytes", "refs", "pinned", "loading"}
        assert (model["name"], model["bytes"]) == ("transformer-02", sizes(zoo)["transformer-02"])
        rss, pss = report["process"]["rss_bytes"], report["process"]["pss_bytes"]
        assert isinstance(rss, int) and isinstance(pss, int) and 0 < pss <= rss
    finally:
        worker.proc.stop()


def _stats(server: Server, path: str) -> Any:
    resp = request(server.url, "GET", path)
    assert resp.status == 200, resp.body
    return resp.json()["model_stats"]


def test_statistics_in_tritons_shape_on_workers_and_combined_on_the_balancer(zoo: Path, logdir: Path) -> None:
    with private_cluster(zoo, logdir, 2) as (workers, balancer):
        model = "mlp-00"
        for worker, count in zip(workers, (2, 3), strict=True):  # straight to each worker
            for seed in range(count):
                _infer(worker, zoo, model, seed)
        request(workers[0].url, "POST", f"/v2/models/{model}/infer", {"inputs": []})  # a failure
        [one] = _stats(workers[0], f"/v2/models/{model}/stats")
        assert set(one) == {
            "name", "version", "last_inference", "inference_count", "execution_count",
            "inference_stats", "batch_stats", "memory_usage", "load_stats",
        }  # fmt: skip
        assert set(one["inference_stats"]) == {
            "success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss",
        }  # fmt: skip
        assert (one["name"], one["version"]) == (model, "1")
        assert one["inference_stats"]["success"]["count"] == 2 and one["inference_stats"]["fail"]["count"] == 1
        assert one["inference_count"] == 4 and one["execution_count"] == 2  # 2 rows a request, one forward each
        assert one["batch_stats"][0]["batch_size"] == 2 and one["batch_stats"][0]["compute_infer"]["count"] == 2
        assert one["inference_stats"]["compute_infer"]["ns"] > 0 and one["last_inference"] > 0
        assert one["load_stats"]["count"] == 1
        assert one["memory_usage"] == [{"type": "CPU", "id": 0, "byte_size": sizes(zoo)[model]}]

        for path in (f"/v2/models/{model}/stats", f"/v2/models/{model}/versions/1/stats"):
            [both] = _stats(balancer, path)
            assert both["inference_stats"]["success"]["count"] == 5
            assert both["inference_stats"]["fail"]["count"] == 1
            assert both["load_stats"]["count"] == 2 and both["inference_count"] == 10
            assert len(both["memory_usage"]) == 2, "resident on both workers"
        assert request(balancer.url, "GET", "/v2/models/no-such/stats").status == 404
        assert request(workers[0].url, "GET", f"/v2/models/{model}/versions/9/stats").status == 404
        [cold] = _stats(workers[0], "/v2/models/cnn-01/stats")
        assert cold["inference_stats"]["success"]["count"] == 0 and cold["memory_usage"] == []


def _rewrite_weights(zoo: Path, name: str, architecture: str, seed: int, tmp: Path) -> None:
    """New weights for a model, moved into place atomically (as a deployment would)."""
    config = (zoo / name / "1" / "config.json").read_bytes()
    args = orjson.loads(config)["args"]
    made = make_model(tmp, name, architecture, args, seed)
    os.replace(made.path / "model.safetensors", zoo / name / "1" / "model.safetensors")


def test_changed_weights_are_reloaded_after_a_rescan(tmp_path: Path, logdir: Path) -> None:
    zoo = tmp_path / "zoo"
    make_model(zoo, "mlp-00", "mlp", args_for("mlp", 64 << 10), seed=1)
    worker = start_worker(zoo, logdir, "--rescan-interval", "0.5", "--admin-token", TOKEN).wait_ready()

    def sha() -> str:
        [row] = request(worker.url, "POST", "/v2/repository/index", b"{}").json()
        return str(row["sha256"])

    try:
        first = sha()
        resp, inputs = _infer(worker, zoo, "mlp-00", seed=1)
        _check_answer(resp, zoo, "mlp-00", inputs)
        # found by the periodic rescan: the index names the new weights, the next request loads them
        _rewrite_weights(zoo, "mlp-00", "mlp", 2, tmp_path / "new")
        second = wait_until(lambda: (s := sha()) != first and s, timeout=30)
        resp, inputs = _infer(worker, zoo, "mlp-00", seed=1)
        assert resp.headers["x-model-source"] == "disk"
        _check_answer(resp, zoo, "mlp-00", inputs)
        # found by an explicit load, at once
        _rewrite_weights(zoo, "mlp-00", "mlp", 3, tmp_path / "newer")
        assert request(worker.url, "POST", "/v2/repository/models/mlp-00/load", b"", AUTH).status == 200
        assert sha() not in (first, second)
        resp, inputs = _infer(worker, zoo, "mlp-00", seed=1)
        assert resp.headers["x-model-source"] == "cpu", "the explicit load paged the new weights in"
        _check_answer(resp, zoo, "mlp-00", inputs)
    finally:
        worker.proc.stop()


def test_bench_paging_runs_every_row_on_a_small_model(tmp_path: Path) -> None:
    """The benchmark's own checks run (each cold request was a load: X-Model-Source disk;
    fadvise left the file uncached) and it writes every row and its chart; the figures are for docs."""
    from cli.bench.paging import run_paging

    assert run_paging(2 << 20, "mlp", 1, 1, tmp_path) == 0
    summary = orjson.loads((tmp_path / "paging.json").read_bytes())
    rows = summary["median_seconds"]
    assert {"cold start, page cache", "cold start, disk-cold", "(b) floor: copy + one steady inference"} <= set(rows)
    assert len(rows) == 9 and all(seconds > 0 for seconds in rows.values())
    assert summary["notes"]["cached_fraction_after_fadvise"] == [0.0]
    assert "| (a) naive / cold start |" in (tmp_path / "paging.md").read_text()
    assert (tmp_path / "paging.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
