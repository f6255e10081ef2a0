"""The docker-compose cluster as local processes, configured by the compose file itself
(the fixtures of tests/test_deploy_cluster.py).

Each service of our image runs the command the compose file gives it, with the
environment it sets (so a variable the CLI did not read would leave its process
misconfigured here). What differs from the containers is only where things listen,
rewritten per value: Redis is a private ``redis-server``; moto's S3 server stands in
for MinIO; the two workers listen on 127.0.0.2 and 127.0.0.3 on one free port, and
a DNS server on loopback answers for the service name ``worker`` as Docker's does
(the balancer is pointed at it with its resolver flag); disk caches and the zoo
are under the test's temp dir. Three settings are made smaller for speed and to
exercise paging: the zoo (six small models), and the workers' CPU budget, so that
models are evicted and loaded again.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.process import free_port
from tests.deploy_files import compose
from tests.harness import Proc, RedisServer, Server, stop_all

WORKER_IPS = ("127.0.0.2", "127.0.0.3")
TOKEN = "compose-test-" + os.urandom(8).hex()
SECRETS = {
    "AFFINITY_ADMIN_TOKEN": TOKEN,
    "MINIO_ROOT_USER": "testing",
    "MINIO_ROOT_PASSWORD": "testing",
    "GRAFANA_ADMIN_PASSWORD": "unused",
}
# Made smaller than the compose file's for speed, and for paging: the largest model is 512 KiB
# of weights, and a worker holds about one model at a time.
ZOO = {"AFFINITY_MODELS_COUNT": "6", "AFFINITY_MODELS_SIZES": "256KiB,512KiB"}
CPU_BUDGET = "700KiB"


def free_port_on(*hosts: str) -> int:
    """A TCP port free on every one of ``hosts``."""
    for _ in range(50):
        port = free_port()
        try:
            for host in hosts:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every address")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    services: dict[str, Any]
    envs: dict[str, dict[str, str]]  # service -> the environment it ran with
    zoo: Path
    models: list[str]
    balancer: Server
    workers: list[Server]
    s3_endpoint: str
    job_output: str
    rewrite: Rewrite


class Rewrite:
    """Where each compose address lives here, and how a service's environment maps to it."""

    def __init__(self, redis_port: int, s3_endpoint: str, worker_port: int, tmp: Path) -> None:
        s3 = urllib.parse.urlsplit(s3_endpoint)
        self.addresses = {
            "redis:6379": f"127.0.0.1:{redis_port}",
            "minio:9000": f"{s3.hostname}:{s3.port}",
            "worker:8100": f"worker:{worker_port}",  # the name our DNS server answers for
        }
        self.worker_port = worker_port
        self.tmp = tmp

    def env(self, service: dict[str, Any], **fixed: str) -> dict[str, str]:
        env = {}
        for var, raw in (service.get("environment") or {}).items():
            value = str(raw)
            for compose_address, here in self.addresses.items():
                value = value.replace(compose_address, here)
            if value.startswith("/var/lib/affinity/") or value.startswith("/tmp/"):
                value = str(self.tmp / value.strip("/").replace("/", "_"))
            if var.endswith("_GRPC_PORT"):
                value = str(free_port_on(*WORKER_IPS, "127.0.0.1"))
            env[var] = value
        env.update(fixed)
        return env


def service_command(service: dict[str, Any]) -> list[str]:
    """The service's command line here: the image's entrypoint is ``affinity``."""
    entrypoint = service.get("entrypoint")
    command = [str(w) for w in service.get("command") or []]
    if entrypoint is None:
        return [sys.executable, "-m", "cli", *command]
    return [*entrypoint, *command]


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """A clean environment (no AFFINITY_* or AWS_* from outside) with ``affinity`` on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AFFINITY_", "AWS_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start_service(name: str, service: dict[str, Any], env: dict[str, str], logdir: Path) -> Proc:
    proc = Proc(name, service_command(service), logdir / f"{name}.log")
    with proc.log.open("ab") as log:
        proc.popen = subprocess.Popen(
            proc.args, env=child_env(env), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    return proc


@contextlib.contextmanager
def dns_server() -> Iterator[int]:
    """Answers A records for the compose service name ``worker``: one per worker, as Docker's DNS does."""
    from dnslib import QTYPE, RR, A
    from dnslib.server import BaseResolver, DNSServer

    class Workers(BaseResolver):  # type: ignore[misc]
        def resolve(self, req: Any, handler: Any) -> Any:
            reply = req.reply()
            if str(req.q.qname).rstrip(".") == "worker" and req.q.qtype == QTYPE.A:
                for ip in WORKER_IPS:
                    reply.add_answer(RR("worker.", QTYPE.A, rdata=A(ip), ttl=1))
            return reply

    port = free_udp_port()
    server = DNSServer(Workers(), port=port, address="127.0.0.1")
    server.start_thread()
    try:
        yield port
    finally:
        server.stop()
        server.server.server_close()


@contextlib.contextmanager
def compose_cluster(tmp: Path, logdir: Path, s3_endpoint: str, dns_server: int) -> Iterator[Cluster]:
    """The zoo job run to its end, two workers and a balancer started as the compose file
    configures them (addresses rewritten), a private Redis; all stopped on exit."""
    services = compose(SECRETS)["services"]
    redis = RedisServer(logdir).start()
    procs: list[Proc] = []
    try:
        rewrite = Rewrite(redis.port, s3_endpoint, free_port_on(*WORKER_IPS), tmp)
        envs: dict[str, dict[str, str]] = {}

        # The one-shot job: generate the zoo and upload it, as the compose file runs it.
        envs["zoo"] = rewrite.env(services["zoo"], **ZOO)
        job = subprocess.run(
            service_command(services["zoo"]),
            env=child_env(envs["zoo"]),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert job.returncode == 0, job.stdout + job.stderr
        zoo = Path(envs["zoo"]["AFFINITY_MODELS_MODELS"])
        models = sorted(p.name for p in zoo.iterdir() if p.is_dir())

        workers = []
        for ip in WORKER_IPS:
            env = rewrite.env(services["worker"], AFFINITY_WORKER_HOST=ip, AFFINITY_WORKER_CPU_MEMORY=CPU_BUDGET)
            assert env["AFFINITY_WORKER_PORT"] == "8100"
            env["AFFINITY_WORKER_PORT"] = str(rewrite.worker_port)
            env["AFFINITY_WORKER_DISK_CACHE_DIR"] = str(tmp / f"cache-{ip}")
            env["AFFINITY_WORKER_THREADS"] = "1"
            envs[f"worker-{ip}"] = env
            proc = start_service(f"worker-{ip}", services["worker"], env, logdir)
            procs.append(proc)
            workers.append(Server(proc, f"http://{ip}:{rewrite.worker_port}"))
        for w in workers:
            w.wait_ready()

        env = rewrite.env(services["balancer"], AFFINITY_BALANCER_HOST="127.0.0.1")
        env["AFFINITY_BALANCER_PORT"] = str(free_port())
        # Docker's DNS answers from the system resolver; here our DNS server answers, asked directly.
        assert env["AFFINITY_BALANCER_WORKERS_DNS"] == f"worker:{rewrite.worker_port}"
        env["AFFINITY_BALANCER_DNS_RESOLVER"] = f"127.0.0.1:{dns_server}"
        env["AFFINITY_BALANCER_INDEX_REFRESH"] = "2"
        envs["balancer"] = env
        proc = start_service("balancer", services["balancer"], env, logdir)
        procs.append(proc)
        balancer = Server(proc, f"http://127.0.0.1:{env['AFFINITY_BALANCER_PORT']}").wait_ready()
        rewrite.addresses["balancer:8000"] = balancer.id
        yield Cluster(services, envs, zoo, models, balancer, workers, s3_endpoint, job.stdout, rewrite)
    finally:
        stop_all(reversed(procs))  # the balancer first; the drains (5 s in the compose file) overlap
        redis.stop()
