"""The Kubernetes manifests, checked without a cluster: against the API schemas, and
against what the ``affinity`` command really reads and serves (probes on the V2 health
paths, environment variables its flags read, grace periods that cover the drain)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.deploy_files import (
    ADMIN_TOKEN_ENV,
    K8S,
    STORE_ENV,
    V2_LIVE,
    V2_READY,
    cli_env,
    k8s_config_maps,
    k8s_container_env,
    k8s_containers,
    k8s_documents,
    shutdown_bound,
)


def test_kubernetes_manifests_validate_against_the_api_schemas() -> None:
    import kubernetes_validate

    docs = k8s_documents()
    kinds = sorted({d["kind"] for _, d in docs})
    assert {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(kinds)
    assert "ConfigMap" in kinds
    version = kubernetes_validate.latest_version()
    for _, doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any error
    # The validator does reject a mistake.
    _, balancer = next((p, d) for p, d in docs if d["kind"] == "Deployment" and "balancer" in d["metadata"]["name"])
    broken = copy.deepcopy(balancer)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = ["http"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_kustomizations_list_every_manifest() -> None:
    base = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(base["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    gpu = yaml.safe_load((K8S / "gpu" / "kustomization.yaml").read_text())
    assert sorted(gpu["resources"]) == sorted([".."] + [p.name for p in (K8S / "gpu").glob("worker*.yaml")])


def test_kubernetes_probes_are_on_the_v2_health_paths() -> None:
    containers = k8s_containers()
    assert {name for name, _, _ in containers} == {"affinity-balancer", "affinity-worker", "affinity-worker-gpu"}
    for name, _, c in containers:
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert c["readinessProbe"]["httpGet"]["path"] == V2_READY, name
        assert c["livenessProbe"]["httpGet"]["path"] == V2_LIVE, name
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe in c:
                assert c[probe]["httpGet"]["port"] == "http", name
        role = c["args"][0]
        assert ports["http"] == int(k8s_container_env(c)[f"AFFINITY_{role.upper()}_PORT"]), name


def test_kubernetes_environment_is_what_the_cli_reads_and_the_token_comes_from_a_secret() -> None:
    env = cli_env()
    for name, _, c in k8s_containers():
        role = c["args"][0]
        values = k8s_container_env(c)
        for var in values:
            assert var in env[role] or var in STORE_ENV, f"{name} sets {var}, which `affinity {role}` does not read"
        for item in c.get("env", []):
            if item["name"] == ADMIN_TOKEN_ENV:
                assert item["valueFrom"]["secretKeyRef"] == {"name": "affinity-admin", "key": "token"}
        if ADMIN_TOKEN_ENV in env[role]:
            assert ADMIN_TOKEN_ENV in values, f"{name} runs without the admin token"
    for name, data in k8s_config_maps().items():
        role = name.removeprefix("affinity-")
        assert set(data) <= env[role], f"ConfigMap {name} holds variables `affinity {role}` does not read"
        assert ADMIN_TOKEN_ENV not in data
    assert not [d for _, d in k8s_documents() if d["kind"] == "Secret"], "secrets are created by hand, never kept here"
    text = "\n".join(p.read_text() for p in K8S.rglob("*.yaml"))
    assert "--admin-token" not in text


def test_kubernetes_termination_grace_covers_prestop_drain_and_requests_in_flight() -> None:
    for name, spec, c in k8s_containers():
        role = c["args"][0]
        drain = float(k8s_container_env(c)[f"AFFINITY_{role.upper()}_DRAIN_DELAY"])
        pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep", name
        wait = float(pre_stop[1])
        assert drain > 0 and wait > 0, name
        assert spec["terminationGracePeriodSeconds"] >= wait + drain + shutdown_bound(role), name


def test_kubernetes_workers_scale_and_are_found_through_a_headless_service() -> None:
    docs = [d for _, d in k8s_documents()]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    headless = [s for s in by_kind["Service"] if s["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1 and headless[0]["metadata"]["name"] == "affinity-worker"
    selector = headless[0]["spec"]["selector"]
    workers = [d for d in by_kind["StatefulSet"] if d["metadata"]["name"].startswith("affinity-worker")]
    for w in workers:
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), "every worker pod answers the discovery name"
        assert w["spec"]["serviceName"] == "affinity-worker"
        annotations = w["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8100"
        container = w["spec"]["template"]["spec"]["containers"][0]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        # Each pod's stable name is its id on the ring: a restarted pod gets its models back.
        worker_id = next(e for e in container["env"] if e["name"] == "AFFINITY_WORKER_WORKER_ID")
        assert worker_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # The balancers resolve that Service's name, on the workers' port.
    balancer_env = k8s_config_maps()["affinity-balancer"]
    discovery = balancer_env.get("AFFINITY_BALANCER_WORKERS_DNS") or balancer_env.get("AFFINITY_BALANCER_WORKERS")
    assert discovery is not None and "affinity-worker" in discovery and discovery.endswith(":8100")
    targets = {
        (h["spec"]["scaleTargetRef"]["kind"], h["spec"]["scaleTargetRef"]["name"])
        for h in by_kind["HorizontalPodAutoscaler"]
    }
    assert {("Deployment", "affinity-balancer"), ("StatefulSet", "affinity-worker")} <= targets
    budgets = {p["metadata"]["name"]: p["spec"]["selector"]["matchLabels"] for p in by_kind["PodDisruptionBudget"]}
    for workload in by_kind["Deployment"] + by_kind["StatefulSet"]:
        if workload["metadata"]["name"] != "affinity-redis":
            assert budgets[workload["metadata"]["name"]] == workload["spec"]["selector"]["matchLabels"]
    gpu = next(w for w in workers if w["metadata"]["name"] == "affinity-worker-gpu")
    gpu_pod = gpu["spec"]["template"]["spec"]
    assert gpu_pod["nodeSelector"] and gpu_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert k8s_container_env(gpu_pod["containers"][0])["AFFINITY_WORKER_DEVICE"] == "cuda"
    for _, spec, c in k8s_containers():
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
