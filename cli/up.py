"""``affinity up``: a local cluster of N workers and one balancer, as processes.

Workers get free ports and an equal share of the cores (torch threads per
worker = cores / workers, at least 1) and the memory flags given to ``up``
(``affinity up --cpu-memory 256MiB`` runs the demo under memory pressure); by
default the CPU and GPU budgets are 50% and 80% split between the workers, and
each worker gets its own subdirectory of ``--disk-cache-dir``. Children get
explicit flags and an environment without ``AFFINITY_*`` variables (the admin
token, a secret, is handed on in its variable, never on a command line), run
in their own session (so a
terminal's Ctrl-C reaches only this supervisor, which stops them in order) and
are told by the kernel to exit if the supervisor itself dies (no orphans).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from common.auth import ADMIN_TOKEN_ENV, check_exposure
from common.process import affinity_command, check_port_free, free_port, http_status, spawn, stop, wait_ready
from common.units import Amount


@dataclass(frozen=True, slots=True)
class UpOptions:
    workers: int = 2
    models: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 8001  # the balancer's gRPC port (0: none)
    policy: str = "affinity"
    redis_url: str | None = None
    cache_size: int = 256 << 20
    zoo_count: int = 12
    zoo_max_size: int = 16 << 20
    log_level: str = "WARNING"
    # every worker's memory tiers (None: the default share, split between the workers)
    cpu_memory: Amount | None = None
    gpu_memory: Amount | None = None
    device: str = "auto"
    eviction: str = "lru"
    disk_cache_dir: Path | None = None
    disk_cache: int = 10 << 30
    remote_store: str | None = None
    remote_endpoint: str | None = None
    max_loads: int = 1
    rescan_interval: float = 10.0
    admin_token: str | None = field(default=None, repr=False)
    allow_code: tuple[str, ...] = ()  # handed to every worker
    cpu_affinity: bool = True  # pin each worker to its share of the cores (when each gets one at least)
    balancer_processes: int = 1
    balancer_args: tuple[str, ...] = ()  # further flags for the balancer (benchmarks compare its settings)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        from balancer.policy import POLICIES

        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose from {', '.join(POLICIES)}")
        check_exposure(self.host, self.admin_token)

    def memory_args(self, index: int) -> list[str]:
        """The memory flags of the ``index``-th worker."""
        cpu = self.cpu_memory or Amount(share=0.5 / self.workers)
        gpu = self.gpu_memory or Amount(share=0.8 / self.workers)
        args = ["--cpu-memory", str(cpu), "--gpu-memory", str(gpu), "--device", self.device]
        args += ["--eviction", self.eviction, "--disk-cache", str(self.disk_cache), "--max-loads", str(self.max_loads)]
        args += ["--rescan-interval", str(self.rescan_interval)]
        if self.disk_cache_dir is not None:
            args += ["--disk-cache-dir", str(self.disk_cache_dir / f"worker-{index}")]
        if self.remote_store is not None:
            args += ["--remote-store", self.remote_store]
        if self.remote_endpoint is not None:
            args += ["--remote-endpoint", self.remote_endpoint]
        if self.allow_code:
            args += ["--allow-code", ",".join(self.allow_code)]
        return args


def worker_cpus(index: int, workers: int, cores: int) -> str:
    """The CPU list of the ``index``-th of ``workers`` workers: an equal, disjoint share
    of the cores (several workers per core when there are more workers than cores)."""
    if workers >= cores:
        return str(index % cores)
    share = cores // workers
    return f"{index * share}-{index * share + share - 1}"


class Cluster:
    def __init__(self, options: UpOptions) -> None:
        self.options = options
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.worker_urls: list[str] = []
        self.grpc_endpoint: str | None = None

    def spawn(self, role: str, args: list[str]) -> subprocess.Popen[bytes]:
        """Start ``affinity <args>`` as a child this cluster stops."""
        token = self.options.admin_token
        proc = spawn(affinity_command(*args), extra_env={ADMIN_TOKEN_ENV: token} if token else None)
        self.procs.append((role, proc))
        return proc

    def _models_dir(self, stack: contextlib.ExitStack) -> Path | None:
        if self.options.models is not None:
            if not self.options.models.is_dir():
                raise ValueError(f"model repository {self.options.models} is not a directory")
            return self.options.models
        if self.options.remote_store is not None:
            return None  # the remote store alone
        from worker.zoo import make_zoo

        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="affinity-zoo-")))
        print(f"generating a demo zoo of {self.options.zoo_count} models in {root} ...", flush=True)
        make_zoo(root, count=self.options.zoo_count, max_size=max(self.options.zoo_max_size, 1 << 20))
        return root

    def start(self, models: Path | None) -> str:
        o = self.options
        for wanted in (o.port, o.grpc_port):
            if wanted:
                check_port_free(o.host, wanted)
        cores = os.cpu_count() or 1
        threads = max(1, cores // o.workers)
        urls = []
        for index in range(o.workers):
            port, grpc_port = free_port(o.host), free_port(o.host)
            worker_args = ["worker", "--host", o.host, "--port", str(port), "--worker-id", f"{o.host}:{port}"]
            worker_args += ["--grpc-port", str(grpc_port)]
            worker_args += ["--models", str(models)] if models is not None else []
            worker_args += ["--threads", str(threads), "--log-level", o.log_level, *o.memory_args(index)]
            if o.cpu_affinity and o.workers <= cores:  # measured to pay (docs/benchmarks.md, throughput)
                worker_args += ["--cpus", worker_cpus(index, o.workers, cores)]
            proc = self.spawn("worker", worker_args)
            urls.append((f"http://{o.host}:{port}", proc))
        for url, proc in urls:
            wait_ready(url + "/v2/health/ready", proc)
        self.worker_urls = [u for u, _ in urls]
        port = o.port or free_port(o.host)
        balancer_args = ["balancer", "--workers", ",".join(u for u, _ in urls), "--host", o.host, "--port", str(port)]
        balancer_args += ["--grpc-port", str(o.grpc_port)]
        balancer_args += ["--policy", o.policy, "--cache-size", str(o.cache_size), "--log-level", o.log_level]
        balancer_args += ["--processes", str(o.balancer_processes), *o.balancer_args]
        if o.redis_url:
            balancer_args += ["--redis-url", o.redis_url]
        proc = self.spawn("balancer", balancer_args)
        endpoint = f"http://{o.host}:{port}"
        wait_ready(endpoint + "/v2/health/ready", proc)
        self.grpc_endpoint = f"{o.host}:{o.grpc_port}" if o.grpc_port else None
        return endpoint

    def stop(self) -> None:
        """Balancer first (it stops taking requests), then the workers; SIGKILL stragglers."""
        for role in ("balancer", "worker"):
            stop(p for r, p in self.procs if r == role)

    def run(self) -> int:
        stop_signal: list[int] = []

        def on_signal(signum: int, frame: object) -> None:
            stop_signal.append(signum)
            raise KeyboardInterrupt

        # Both explicitly: a shell starts background jobs with SIGINT ignored, and
        # Python keeps an inherited "ignore", so Ctrl-C or kill -INT would do nothing.
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        with contextlib.ExitStack() as stack:
            try:
                models = self._models_dir(stack)
                stack.callback(self.stop)  # runs before the demo zoo's temp dir is removed
                endpoint = self.start(models)
                print(
                    banner(endpoint, models, self.options.workers, self.options.remote_store, self.grpc_endpoint),
                    flush=True,
                )
                while True:
                    for role, proc in self.procs:
                        if proc.poll() is not None:
                            print(f"affinity up: a {role} exited with code {proc.returncode}; stopping", flush=True)
                            return 1
                    time.sleep(0.5)
            except KeyboardInterrupt:
                print("\nstopping ...", flush=True)
                return 0
            except RuntimeError as exc:
                print(f"affinity up: {exc}", file=sys.stderr, flush=True)
                return 1
        return 0


def example_requests(models: Path) -> list[tuple[str, bytes]]:
    """Candidate (model, request body) pairs for the banner's curl example:
    models with one small float input, in name order."""
    found = []
    for model_dir in sorted(models.iterdir()):
        versions = sorted(model_dir.iterdir(), reverse=True) if model_dir.is_dir() else []
        for version_dir in versions[:1]:
            try:
                config = orjson.loads((version_dir / "config.json").read_bytes())
                spec = config["inputs"][0]
                shape = [1 if d == -1 else int(d) for d in spec["shape"]]
            except (OSError, ValueError, KeyError, IndexError, TypeError):
                continue
            count = 1
            for d in shape:
                count *= d
            if len(config["inputs"]) != 1 or spec["datatype"] not in ("FP32", "FP64") or count > 128:
                continue
            data = [round((i % 7) / 7, 2) for i in range(count)]
            body = {"inputs": [{"name": spec["name"], "shape": shape, "datatype": spec["datatype"], "data": data}]}
            found.append((model_dir.name, orjson.dumps(body)))
    return found


def verified_example(endpoint: str, models: Path) -> tuple[str, bytes] | None:
    """The first candidate example that the running cluster answers with 200."""
    for name, body in example_requests(models)[:8]:
        if http_status(f"{endpoint}/v2/models/{name}/infer", body, timeout=30) == 200:
            return name, body
    return None


def banner(endpoint: str, models: Path | None, workers: int, store: str | None = None, grpc: str | None = None) -> str:
    sources = " and ".join(str(s) for s in (models, store) if s is not None)
    lines = [
        f"affinity-serve is up: {endpoint}  ({workers} workers, models from {sources})",
        *([f"  grpc:    {grpc}  (V2 GRPCInferenceService)"] if grpc else []),
        f"  models:  curl -s -X POST {endpoint}/v2/repository/index",
    ]
    example = verified_example(endpoint, models) if models is not None else None
    if example is not None:
        name, body = example
        lines.append(
            f"  infer:   curl -s {endpoint}/v2/models/{name}/infer -H 'Content-Type: application/json' "
            f"-d '{body.decode()}'"
        )
    lines.append(f"  metrics: curl -s {endpoint}/metrics")
    lines.append("Press Ctrl-C to stop.")
    return "\n".join(lines)
