"""The docker-compose cluster as local processes, configured by the compose file itself
(tests/compose_cluster.py starts it: each service runs the command and the environment
the compose file gives it, only its addresses rewritten to loopback). A real Prometheus
then scrapes the processes with the compose configuration's jobs, and every Grafana
panel's query must return data with the labels its legend names.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.process import free_port
from tests import compose_cluster
from tests.compose_cluster import TOKEN, WORKER_IPS, Cluster, child_env, service_command
from tests.deploy_files import DASHBOARD, DEPLOY, PROMETHEUS, k8s_documents, pod_spec
from tests.harness import Proc, moto_s3, request, wait_until
from tests.reference import infer_body, sample_inputs

# A cluster of five processes and a Prometheus start within a test: more room than the default.
pytestmark = pytest.mark.timeout(300)

PROMETHEUS_BINARY = shutil.which("prometheus")


@pytest.fixture(scope="module")
def dns_server() -> Iterator[int]:
    with compose_cluster.dns_server() as port:
        yield port


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3() as url:
        yield url


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str, dns_server: int) -> Iterator[Cluster]:
    tmp, logdir = tmp_path_factory.mktemp("compose"), tmp_path_factory.mktemp("compose-logs")
    with compose_cluster.compose_cluster(tmp, logdir, s3_endpoint, dns_server) as started:
        yield started


def _infer(cluster: Cluster, model: str, seed: int, headers: dict[str, str] | None = None) -> Any:
    body = infer_body(sample_inputs(cluster.zoo, model, 1, seed))
    return request(cluster.balancer.url, "POST", f"/v2/models/{model}/infer", body, headers)


def test_the_zoo_job_uploads_every_model_with_its_manifest(cluster: Cluster) -> None:
    import boto3

    assert "6 versions in s3://models/zoo: 6 uploaded, 0 unchanged" in cluster.job_output
    env = cluster.envs["zoo"]
    client = boto3.client(
        "s3", endpoint_url=cluster.s3_endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"],
    )  # fmt: skip
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="models")["Contents"]}
    for model in cluster.models:
        assert {f"zoo/{model}/1/{f}" for f in ("model.safetensors", "config.json", "manifest.json")} <= keys
    # Run again (compose up once more): nothing changed, nothing uploaded.
    again = subprocess.run(
        [sys.executable, "-m", "cli", "models", "push"],
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0 and "0 uploaded, 6 unchanged" in again.stdout, again.stdout + again.stderr


def test_the_compose_topology_serves_an_inference_whose_model_came_from_the_remote_store(cluster: Cluster) -> None:
    # Both workers joined the balancer's ring (found by DNS, or listed): it tracks each one's load.
    metrics = request(cluster.balancer.url, "GET", "/metrics").body.decode()
    members = set(re.findall(r'affinity_worker_inflight\{worker="([^"]+)"\}', metrics))
    assert members == {f"{ip}:{urllib.parse.urlsplit(cluster.workers[0].url).port}" for ip in WORKER_IPS}
    model = cluster.models[0]
    resp = _infer(cluster, model, seed=1)
    assert resp.status == 200, resp.body
    assert resp.headers["x-model-source"] == "remote", "paged in from the store: no local repository"
    assert resp.headers["x-served-by"] in members
    assert resp.json()["model_name"] == model
    again = _infer(cluster, model, seed=1)
    assert again.headers["x-cache"] == "hit" and again.body == resp.body
    # Every worker lists the store's models, none of which it had locally.
    index = request(cluster.workers[1].url, "POST", "/v2/repository/index", {}).json()
    assert sorted({row["name"] for row in index}) == cluster.models


def test_the_admin_token_from_the_environment_guards_the_admin_routes(cluster: Cluster) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    worker = cluster.workers[0].url
    path = f"/v2/repository/models/{cluster.models[1]}/load"
    assert request(worker, "POST", path, {}).status == 401
    assert request(worker, "POST", path, {}, bearer).status == 200
    # The balancer's admin routes take the same token; its ring holds the workers DNS named.
    assert request(cluster.balancer.url, "GET", "/admin/cluster").status == 401
    answer = request(cluster.balancer.url, "GET", "/admin/cluster", headers=bearer)
    assert answer.status == 200
    assert sorted(answer.json()["ring"]["workers"]) == sorted(w.id for w in cluster.workers)


def test_the_loadgen_service_loads_the_balancer(cluster: Cluster, tmp_path: Path) -> None:
    """The compose file's on-demand load generator, shorter: its settings reach the balancer."""
    service = cluster.services["loadgen"]
    env = cluster.rewrite.env(service, AFFINITY_LOADGEN_DURATION="2", AFFINITY_LOADGEN_RATE="20")
    assert env["AFFINITY_LOADGEN_URL"] == cluster.balancer.url
    run = subprocess.run(
        service_command(service), env=child_env(env), capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((Path(env["AFFINITY_LOADGEN_OUT"]) / "report.json").read_text())
    assert report["counts"]["ok"] > 0 and report["counts"]["errors"] == 0, report["counts"]


def test_health_checks_answer_as_the_image_and_the_manifests_ask(cluster: Cluster, tmp_path: Path) -> None:
    script = str(DEPLOY / "healthcheck.py")

    def check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, script], env=child_env(env), capture_output=True, text=True, timeout=30, check=False
        )

    for name in ("balancer", f"worker-{WORKER_IPS[0]}"):
        result = check(cluster.envs[name])
        assert result.returncode == 0 and "ready" in result.stdout, (name, result.stdout)
    nobody = check({"AFFINITY_BALANCER_PORT": str(free_port()), "AFFINITY_WORKER_PORT": str(free_port())})
    assert nobody.returncode == 1 and "no balancer or worker" in nobody.stdout
    # Kubernetes probes the same paths on the same processes.
    for _, doc in k8s_documents():
        for container in (pod_spec(doc) or {}).get("containers", []):
            role = (container.get("args") or [""])[0]
            target = cluster.balancer if role == "balancer" else cluster.workers[0] if role == "worker" else None
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if target is not None and probe in container:
                    path = container[probe]["httpGet"]["path"]
                    assert request(target.url, "GET", path).status == 200, (doc["metadata"]["name"], probe, path)


def test_health_check_reports_a_process_that_is_not_ready(tmp_path: Path) -> None:
    """A 503 from /v2/health/ready (starting, or draining) is unhealthy."""
    import http.server

    class NotReady(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503 if self.path == "/v2/health/ready" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotReady)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = child_env(
            {"AFFINITY_WORKER_PORT": str(server.server_address[1]), "AFFINITY_BALANCER_PORT": str(free_port())}
        )
        result = subprocess.run(
            [sys.executable, str(DEPLOY / "healthcheck.py")],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 1 and "not ready" in result.stdout
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- Prometheus and the Grafana dashboard ------------------------------------------------------

_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label sets, ranges, grouping lists and
    function names taken out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", text):
        word = match.group(0)
        if word in _PROMQL_WORDS or re.match(r"\s*\(", text[match.end() :]) or word.startswith("$"):
            continue
        names.add(word)
    return names


def test_metric_names_are_read_out_of_promql() -> None:
    expr = 'histogram_quantile(0.99, sum by (worker, le) (rate(a_b_bucket{x="y{"}[5m]))) / on(i) c_total > 0'
    assert metric_names(expr) == {"a_b_bucket", "c_total"}


def _substitute(expr: str) -> str:
    """Grafana's variables as a dashboard viewer would have them: all models, a 10 s rate window."""
    return expr.replace("$__rate_interval", "10s").replace("$model", ".*")


def _panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def _exported(url: str) -> set[str]:
    text = request(url, "GET", "/metrics").body.decode()
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_every_dashboard_metric_is_one_the_processes_export(cluster: Cluster) -> None:
    for worker in cluster.workers:  # series labelled by model appear once a model has served
        body = infer_body(sample_inputs(cluster.zoo, cluster.models[0], 1, seed=5))
        assert request(worker.url, "POST", f"/v2/models/{cluster.models[0]}/infer", body).status == 200
    exported = _exported(cluster.balancer.url)
    for worker in cluster.workers:
        exported |= _exported(worker.url)
    named = set().union(*(metric_names(t["expr"]) for p in _panels() for t in p["targets"]))
    assert len(named) >= 10 and all(n.startswith("affinity_") for n in named)
    assert named <= exported, f"not exported: {sorted(named - exported)}"


class Traffic:
    """Requests through the balancer in a thread, until stopped (and never past ``limit`` s):
    fresh inputs (misses that reach a worker, pages models in and out) and repeated ones (hits)."""

    def __init__(self, cluster: Cluster, limit: float) -> None:
        self.cluster = cluster
        self.deadline = time.monotonic() + limit
        self.stopped = threading.Event()
        self.statuses: list[int] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(7)
        n = 0
        while not self.stopped.is_set() and time.monotonic() < self.deadline:
            model = self.cluster.models[n % len(self.cluster.models)]
            seed = 1000 + n if n % 2 else n % 3  # half unique, half repeated
            self.statuses.append(_infer(self.cluster, model, seed).status)
            n += 1
            self.stopped.wait(rng.uniform(0.01, 0.05))

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(40)


@pytest.fixture(scope="module")
def prometheus(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus with the compose configuration's affinity jobs, aimed at the local processes."""
    if PROMETHEUS_BINARY is None:
        pytest.skip("prometheus not installed (Debian: apt-get install prometheus)")
    tmp = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    balancer = jobs.pop("affinity-balancer")
    balancer["static_configs"] = [{"targets": [cluster.balancer.url.removeprefix("http://")]}]
    worker = jobs.pop("affinity-worker")
    del worker["dns_sd_configs"]  # Docker's DNS: the same two addresses our DNS server gives
    worker["static_configs"] = [{"targets": [w.url.removeprefix("http://") for w in cluster.workers]}]
    this = jobs.pop("prometheus")
    this["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    assert set(jobs) == {"minio", "grafana"}, "every other job scrapes a process this test does not run"
    config["scrape_configs"] = [balancer, worker, this]
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    args = [
        PROMETHEUS_BINARY, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]  # fmt: skip
    proc = Proc("prometheus", args, tmp / "prometheus.log").start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _status(url + "/-/ready") == 200, 60, 0.2)
        yield url
    finally:
        proc.stop()


def _status(url: str) -> int | None:
    from common.process import http_status

    return http_status(url)


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    resp = request(prometheus, "GET", "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert resp.status == 200, resp.body
    result: list[dict[str, Any]] = resp.json()["data"]["result"]
    return result


def test_every_grafana_panel_returns_data_from_prometheus_scraping_the_cluster(
    cluster: Cluster, prometheus: str
) -> None:
    up = 'up{job=~"affinity-.*"}'
    wait_until(lambda: len([r for r in _query(prometheus, up) if r["value"][1] == "1"]) == 3, 30, 0.5)
    members = {w.id for w in cluster.workers}
    Result = list[dict[str, Any]]

    def positive(result: Result) -> set[str]:
        return {r["metric"].get("tier", "") for r in result if float(r["value"][1]) > 0}

    # Beyond returning data: the panels saw what the traffic does, paging included (loads from
    # the store or the disk cache, evictions under the small budget), hits and misses both.
    expected: dict[str, Any] = {
        "Model loads by source tier": lambda result: positive(result) & {"remote", "disk"},
        "Model evictions by tier": positive,
        "Cache hit ratio": lambda result: 0 < float(result[0]["value"][1]) < 1,
        "In flight per worker": lambda result: {r["metric"]["worker"] for r in result} == members,
        "Worker health": lambda result: (
            {(r["metric"]["worker"], r["metric"]["state"]) for r in result} == {(m, "healthy") for m in members}
        ),
        "Request rate (balancer)": lambda result: {r["metric"]["code"] for r in result} == {"200"},
    }
    pending = [(p["title"], t) for p in _panels() for t in p["targets"]]
    assert set(expected) <= {title for title, _ in pending}

    def answered(title: str, target: dict[str, Any]) -> bool:
        result = _query(prometheus, _substitute(target["expr"]))
        finite = [r for r in result if math.isfinite(float(r["value"][1]))]
        legend = re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", ""))
        if not finite or any(not r["metric"].get(label) for r in finite for label in legend):
            return False
        return bool(expected.get(title, bool)(finite))

    with Traffic(cluster, limit=120) as traffic:
        deadline = time.monotonic() + 90
        while pending and time.monotonic() < deadline:
            pending = [(title, t) for title, t in pending if not answered(title, t)]
            time.sleep(1)
    assert not pending, f"panels without the data expected: {[(title, t['expr']) for title, t in pending]}"
    assert traffic.statuses and set(traffic.statuses) == {200}
    # The dashboard's variables (label_values(metric, label)) list what the processes report.
    for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"])
        assert match is not None, variable["query"]
        metric, label = match.groups()
        query = urllib.parse.urlencode({"match[]": metric})
        values = request(prometheus, "GET", f"/api/v1/label/{label}/values?{query}").json()["data"]
        assert set(cluster.models) <= set(values), (variable["name"], values)
