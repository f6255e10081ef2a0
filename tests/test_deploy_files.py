"""The deployment files, checked without a Docker engine or a cluster: the compose file
against the Compose specification (the Kubernetes manifests: tests/test_deploy_kubernetes.py),
the Dockerfile with hadolint and dockerfile-parse, the Prometheus configuration with
promtool, and each against what the ``affinity`` command really reads and serves."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy_files import (
    ADMIN_TOKEN_ENV,
    COMPOSE,
    DASHBOARD,
    DEPLOY,
    PROMETHEUS,
    ROOT,
    STORE_ENV,
    V2_READY,
    affinity_commands,
    cli_env,
    compose,
    k8s_container_env,
    k8s_containers,
    shutdown_bound,
    uses_our_image,
)
from worker.config import WorkerConfig

BIN = Path(sys.executable).parent
PROMTOOL = shutil.which("promtool")


def _tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is missing: install the test extra (pip install -e '.[test]')"
    return str(path)


# -- docker-compose ---------------------------------------------------------------------------


def _check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    cmd = [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_compose_validates_against_the_compose_specification(tmp_path: Path) -> None:
    result = _check_compose_schema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    # The validator does reject a file compose would refuse.
    broken = compose()
    broken["services"]["worker"]["depends_on"]["zoo"]["condition"] = "service_finished"
    broken["services"]["balancer"]["healthcheck"]["retries"] = "three"
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    assert _check_compose_schema(tmp_path / "broken.yml").returncode != 0


def test_every_compose_service_has_a_health_check_and_comes_up_in_order() -> None:
    services = compose()["services"]
    assert {"redis", "minio", "zoo", "worker", "balancer", "prometheus", "grafana"} <= set(services)
    jobs = set()
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if check.get("disable"):
            # Only a one-shot job may go without one: it exits, and what needs it waits for that.
            assert service.get("restart") == "no", f"{name} disables its healthcheck but is not a job"
            jobs.add(name)
        else:
            assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name
    for name, service in services.items():
        for dep, cond in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if dep in jobs else "service_healthy"
            assert cond["condition"] == wanted, f"{name} waits for {dep} with {cond['condition']}"
    assert services["worker"]["depends_on"] == {"zoo": {"condition": "service_completed_successfully"}}
    assert set(services["balancer"]["depends_on"]) >= {"redis", "worker"}
    assert "minio" in services["zoo"]["depends_on"]
    assert "prometheus" in services["grafana"]["depends_on"]
    # Our processes are probed on the V2 ready path by the image's script.
    script = (DEPLOY / "healthcheck.py").read_text()
    assert f'"{V2_READY}"' in script
    for name in ("worker", "balancer"):
        assert services[name]["healthcheck"]["test"] == ["CMD", "python3", "/opt/affinity/healthcheck.py"]


def test_compose_environment_is_what_the_cli_reads() -> None:
    """Every variable set on a service of our image is read by the command it runs (each flag of
    command C reads AFFINITY_<C>_<FLAG>; AFFINITY_ADMIN_TOKEN is the shared one), or is
    boto3's for the store. A misspelt or not-yet-existing flag's variable fails here."""
    env = cli_env()
    checked = 0
    for name, service in compose()["services"].items():
        if not uses_our_image(service):
            continue
        commands = affinity_commands(service)
        readable = set().union(*(env[c] for c in commands))
        for var in service.get("environment", {}):
            checked += 1
            if var in STORE_ENV:
                continue
            assert var in readable, f"{name} sets {var}, which `affinity {' / '.join(commands)}` does not read"
    assert checked > 20


def test_no_secret_is_a_literal_in_the_compose_file() -> None:
    services = compose()["services"]
    secrets = {ADMIN_TOKEN_ENV, "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "MINIO_ROOT_PASSWORD"}
    secrets |= {"MINIO_ROOT_USER", "GF_SECURITY_ADMIN_PASSWORD"}
    seen = set()
    for name, service in services.items():
        for var, value in service.get("environment", {}).items():
            if var in secrets:
                seen.add(var)
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), f"{name}: {var} is not taken from .env"
        assert "--admin-token" not in " ".join(map(str, service.get("command") or [])), name
    assert {ADMIN_TOKEN_ENV, "AWS_SECRET_ACCESS_KEY", "GF_SECURITY_ADMIN_PASSWORD"} <= seen
    # The example .env names every variable the file requires, with no value filled in.
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE.read_text()))
    example = dict(line.split("=", 1) for line in (DEPLOY / ".env.example").read_text().splitlines() if "=" in line)
    assert set(example) == required and not any(example.values())
    assert "/deploy/.env" in (ROOT / ".gitignore").read_text().split()


def test_compose_stop_grace_covers_the_drain_and_the_requests_in_flight() -> None:
    services = compose()["services"]
    for role in ("worker", "balancer"):
        service = services[role]
        drain = float(service["environment"][f"AFFINITY_{role.upper()}_DRAIN_DELAY"])
        grace = float(str(service["stop_grace_period"]).removesuffix("s"))
        assert drain > 0 and grace >= drain + shutdown_bound(role), role
    # Workers scale (no published ports, found through DNS); the balancer is the endpoint.
    assert "ports" not in services["worker"] and services["worker"]["deploy"]["replicas"] >= 2
    assert "8000:8000" in services["balancer"]["ports"]


# -- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    result = subprocess.run(
        [_tool("hadolint"), str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\nUSER root\n")
    assert subprocess.run([_tool("hadolint"), str(bad)], capture_output=True, timeout=60, check=False).returncode != 0


def test_dockerfile_stages_parse_and_build_one_slim_non_root_cpu_image() -> None:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(DEPLOY / "Dockerfile"))
    instructions = parser.structure
    froms = [i["value"] for i in instructions if i["instruction"] == "FROM"]
    assert froms == ["${BASE_IMAGE} AS base", "base AS build", "base AS runtime"]
    args = {
        i["value"].split("=", 1)[0]: i["value"].split("=", 1)[1]
        for i in instructions
        if i["instruction"] == "ARG" and "=" in i["value"]
    }
    assert args["BASE_IMAGE"].startswith("python:3.11-slim")
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    pinned = re.search(r"torch==([0-9.]+)", (ROOT / ".ci" / "run").read_text())
    assert pinned is not None and args["TORCH_VERSION"] == pinned.group(1), "the image's torch is CI's torch"
    runs = [i["value"] for i in instructions if i["instruction"] == "RUN"]
    torch_runs = [r for r in runs if "torch" in r]
    assert torch_runs == ['pip install --no-cache-dir --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION"']
    # Only the runtime stage is the image: what follows its FROM.
    runtime = instructions[max(n for n, i in enumerate(instructions) if i["instruction"] == "FROM") :]
    final = {i["instruction"]: i["value"] for i in runtime}
    assert final["USER"] == "${UID}:${UID}" and args["UID"] not in ("0", "root")
    assert json.loads(final["ENTRYPOINT"]) == ["affinity"]
    assert final["HEALTHCHECK"].split("CMD", 1)[1].strip() == '["python3", "/opt/affinity/healthcheck.py"]'
    assert "COPY --from=build /opt/affinity /opt/affinity" in [
        f"COPY {i['value']}" for i in runtime if i["instruction"] == "COPY"
    ]
    # Every package the project ships is copied in, and the build context lets each copied path through.
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert args["EXTRAS"] == "onnx" and "onnx" in project["project"]["optional-dependencies"], "ONNX models serve"
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = [i["value"].split()[0] for i in instructions if i["instruction"] == "COPY" and "--from" not in i["value"]]
    assert {p.rstrip("*") for p in packages} <= set(copied)
    allowed = [
        line[1:].rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for source in copied:
        assert (ROOT / source).exists(), source
        assert source in allowed, f"{source} is excluded from the build context"


# -- Prometheus and Grafana -------------------------------------------------------------------


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)")
def test_prometheus_configuration_passes_promtool(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(PROMETHEUS)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The in-cluster configuration: Debian's build of Prometheus leaves out Kubernetes service
    # discovery, so where promtool does not know kubernetes_sd_configs the rest (relabelling
    # rules, regexes) is checked with a static target in its place.
    k8s = DEPLOY / "prometheus" / "kubernetes.yml"
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(k8s)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0 and "kubernetes_sd_configs not found" in result.stdout + result.stderr:
        config = yaml.safe_load(k8s.read_text())
        for job in config["scrape_configs"]:
            assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
            job["static_configs"] = [{"targets": ["127.0.0.1:8000"]}]
        (tmp_path / "kubernetes.yml").write_text(yaml.safe_dump(config))
        result = subprocess.run(
            [PROMTOOL, "check", "config", str(tmp_path / "kubernetes.yml")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    broken = yaml.safe_load(PROMETHEUS.read_text())
    broken["scrape_configs"][0]["scrape_interval"] = "five seconds"
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    assert subprocess.run(
        [PROMTOOL, "check", "config", str(tmp_path / "broken.yml")], capture_output=True, check=False
    ).returncode


def test_prometheus_scrapes_every_affinity_process_of_the_compose_cluster() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["affinity-balancer"]["static_configs"][0]["targets"] == ["balancer:8000"]
    assert jobs["affinity-worker"]["dns_sd_configs"][0] == {
        "names": ["worker"],
        "type": "A",
        "port": 8100,
        "refresh_interval": "5s",
    }
    services = compose()["services"]
    assert services["prometheus"]["volumes"][0].startswith("./prometheus/prometheus.yml:")
    for job in config["scrape_configs"]:
        # No target labels: a target's `role` would rename the processes' own `role` label.
        assert "relabel_configs" not in job and all("labels" not in s for s in job.get("static_configs", []))


def test_grafana_dashboard_is_provisioned_from_the_mounted_files() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/affinity.yml").read_text())
    (source,) = datasource["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    mounts = dict(
        v.rsplit(":", 1)[0].split(":", 1) for v in compose()["services"]["grafana"]["volumes"] if v.startswith("./")
    )
    assert mounts["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("request rate", "latency", "cache hit ratio", "per worker", "loads", "evictions", "tier memory"):
        assert topic in titles, topic


def test_workers_on_a_wildcard_address_take_the_hostname_as_their_id(tmp_path: Path) -> None:
    """Replicas of the compose `worker` service all listen on 0.0.0.0:8100; each must still
    have its own id on the ring (its container's hostname), and an explicit id wins."""
    import socket

    store = tmp_path.as_uri()
    token = "t0ken"  # a wildcard address needs the admin token (tests/test_security.py)
    assert WorkerConfig(host="0.0.0.0", port=8100, remote_store=store, admin_token=token).identity == (
        f"{socket.gethostname()}:8100"
    )
    assert WorkerConfig(host="::", port=8100, remote_store=store, admin_token=token).identity == (
        f"{socket.gethostname()}:8100"
    )
    assert WorkerConfig(host="127.0.0.2", port=8100, remote_store=store).identity == "127.0.0.2:8100"
    assert WorkerConfig(host="0.0.0.0", port=8100, remote_store=store, worker_id="w-0", admin_token=token).identity == (
        "w-0"
    )
    assert compose()["services"]["worker"]["environment"]["AFFINITY_WORKER_HOST"] == "0.0.0.0"


def _settings_of_every_process() -> list[tuple[str, list[str], dict[str, str]]]:
    """(where, command path, environment) of every process the compose file and the manifests
    run, secrets and pod fields given stand-in values."""
    stand_ins = {"AFFINITY_ADMIN_TOKEN": "t0ken", "MINIO_ROOT_USER": "u", "MINIO_ROOT_PASSWORD": "p"}
    stand_ins["GRAFANA_ADMIN_PASSWORD"] = "g"
    found = []
    for name, service in compose(stand_ins)["services"].items():
        if uses_our_image(service):
            env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
            found += [(f"compose {name}", c.split(), env) for c in affinity_commands(service)]
    for name, _, c in k8s_containers():
        env = {k: v if isinstance(v, str) else "affinity-worker-0" for k, v in k8s_container_env(c).items()}
        found.append((f"k8s {name}", [c["args"][0]], env))
    return found


def test_every_setting_in_the_files_is_a_value_its_flag_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables' values parse as their flags' types (sizes, shares, numbers), and a worker's
    settings make a valid worker configuration (store URL, device, budgets)."""
    from cli.flags import config_from
    from cli.main import build_parser

    checked, refused = set(), []
    for where, command, env in _settings_of_every_process():
        for var in [v for v in os.environ if v.startswith("AFFINITY_")]:
            monkeypatch.delenv(var)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        try:
            args = build_parser().parse_args(command)
        except SystemExit:
            refused.append(f"{where}: `affinity {' '.join(command)}`")
            continue
        if command == ["worker"]:
            config = config_from(WorkerConfig, args)
            assert config.remote_store and config.host == "0.0.0.0", where
        checked.add(where)
    assert not refused, f"settings refused: {refused}"
    assert len(checked) >= 7
