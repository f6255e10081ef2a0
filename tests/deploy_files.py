"""What the deployment tests read: the files under deploy/, and the environment
variables the ``affinity`` command really reads (from its own parser)."""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "affinity.json"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
IMAGE = "affinity-serve"
ADMIN_TOKEN_ENV = "AFFINITY_ADMIN_TOKEN"
# boto3's own variables: the remote store's credentials and region.
STORE_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION"}

V2_READY, V2_LIVE = "/v2/health/ready", "/v2/health/live"


def shutdown_bound(role: str) -> float:
    """How long a ``balancer`` or ``worker`` waits for its requests in flight at shutdown
    (its config's default)."""
    from balancer.config import BalancerConfig
    from worker.config import WorkerConfig

    config = {"balancer": BalancerConfig, "worker": WorkerConfig}[role]
    fields = {f.name: f.default for f in dataclasses.fields(config)}
    return float(fields["shutdown_timeout"])  # type: ignore[arg-type]


_ENV_IN_HELP = re.compile(r"\[env ([A-Z0-9_]+)\]")


@cache
def cli_env() -> dict[str, frozenset[str]]:
    """Every command path (``worker``, ``models make``, ...) with the variables its flags read,
    as its parser declares them (each flag's help ends in ``[env NAME]``)."""
    from cli.main import build_parser

    found: dict[str, frozenset[str]] = {}

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        names = set()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, (*path, name))
            elif action.help and (match := _ENV_IN_HELP.search(action.help)):
                names.add(match.group(1))
        if path:
            parser.format_help()  # every command's --help renders (a stray % in a help text would raise)
            found[" ".join(path)] = frozenset(names)

    walk(build_parser(), ())
    return found


def interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` with ``values``."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        if values.get(name):
            return values[name]
        if op == ":?":
            raise KeyError(f"{name} is required: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-?])([^}]*))?\}", one, text)


def compose(values: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose file as compose reads it (anchors merged; ``${...}`` filled from ``values``
    when given, else left as written)."""
    text = COMPOSE.read_text()
    if values is not None:
        text = interpolate(text, values)
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def uses_our_image(service: dict[str, Any]) -> bool:
    return str(service.get("image", "")).split(":")[0] == IMAGE


def affinity_commands(service: dict[str, Any]) -> list[str]:
    """The ``affinity`` command paths a service of our image runs (``worker``, ``models make``)."""
    known = cli_env()
    entrypoint = service.get("entrypoint")
    command = service.get("command") or []
    if entrypoint is None:  # the image's entrypoint: affinity
        words = [str(w) for w in command]
        return [_longest(known, words)]
    script = " ".join(str(w) for w in command)
    runs = []
    for part in re.split(r"&&|\|\||;", script):
        words = shlex.split(part)
        if words and words[0] == "affinity":
            runs.append(_longest(known, words[1:]))
    return runs


def _longest(known: dict[str, frozenset[str]], words: list[str]) -> str:
    for n in (2, 1):
        path = " ".join(words[:n])
        if path in known:
            return path
    raise AssertionError(f"not an affinity command: {words}")


def k8s_documents(root: Path = K8S) -> list[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes resource under deploy/k8s (kustomization files are kustomize's, not the API's)."""
    docs = []
    for path in sorted(root.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        spec: dict[str, Any] = doc["spec"]["template"]["spec"]
        return spec
    return None


def k8s_containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload name, pod spec, container) for every container of our image."""
    found = []
    for _, doc in k8s_documents():
        spec = pod_spec(doc)
        for container in (spec or {}).get("containers", []):
            if container["image"].startswith("affinity-serve"):
                found.append((doc["metadata"]["name"], spec, container))
    return found


def k8s_config_maps() -> dict[str, dict[str, str]]:
    """Each ConfigMap's data, by name."""
    return {d["metadata"]["name"]: d["data"] for _, d in k8s_documents() if d["kind"] == "ConfigMap"}


def k8s_container_env(container: dict[str, Any]) -> dict[str, Any]:
    """A container's environment: its ConfigMaps' data, then its own ``env`` (a ``valueFrom`` as it is)."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(k8s_config_maps()[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env
