"""The worker's configuration: built once from flags, frozen, self-validating."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from common.auth import check_exposure
from common.http_limits import HttpLimits
from common.process import parse_cpus
from common.units import Amount
from worker.custom_code import parse_allowed
from worker.eviction import POLICIES

WILDCARD_HOSTS = ("0.0.0.0", "::", "")

DEVICES = ("auto", "none", "stand-in")  # or cuda / cuda:N
HALF = Amount(share=0.5)
MOST = Amount(share=0.8)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    models: Path | None = None  # the read-only local repository (optional with a remote store)
    host: str = "127.0.0.1"
    port: int = 8100
    grpc_port: int = 8101  # 0: no gRPC listener
    grpc_max_message: int = 4 << 20  # largest gRPC message received or sent (gRPC's default)
    worker_id: str = ""  # default: host:port
    threads: int = 0  # inference threads; 0: all cores
    max_loads: int = 1
    max_body_size: int = 64 << 20
    max_connections: int = 4096
    max_buffered_body: int = 0  # request bodies held by the whole process; 0: max(256 MiB, 4 x max body)
    write_timeout: float = 30.0
    max_elements: int = 1 << 26
    max_queue: int = 256  # requests queued per model; one more is a 503 with Retry-After
    cpus: str = ""  # CPU list this process runs on (empty: wherever the kernel puts it)
    max_queue_delay: float = 0.0  # seconds a batch may wait for more requests, when it pays (0: Triton's default)
    shutdown_timeout: float = 30.0
    drain_delay: float = 0.0  # seconds not-ready but still serving after SIGTERM
    heap_trim_interval: float = 10.0  # seconds between checks that trim freed heap memory (0: never)
    capacity: int = 0  # bytes reported to balancers (0: the CPU memory budget)
    register_redis: str | None = None  # keep a registration in this Redis (balancer --workers-redis)
    register_ttl: float = 10.0  # seconds a registration lives without a heartbeat
    advertise: str = ""  # the base URL balancers reach this worker at (default http://host:port)
    log_level: str = "INFO"
    # memory tiers
    cpu_memory: Amount = HALF  # of the machine's RAM (or the container's limit)
    gpu_memory: Amount = MOST  # of the device's memory; 0: no GPU tier
    device: str = "auto"  # auto (CUDA when present), none, stand-in (tests), cuda[:N]
    eviction: str = "lru"
    disk_cache_dir: Path | None = None  # default with a remote store: a temp dir, removed at exit
    disk_cache: int = 10 << 30
    remote_store: str | None = None  # s3://bucket/prefix or file:///dir
    remote_endpoint: str | None = None
    rescan_interval: float = 10.0  # seconds between repository rescans; 0: only at start and on load
    load_wait: float = 30.0  # seconds a load waits for room held by models in use, then 503
    admin_token: str | None = field(default=None, repr=False)
    allow_code: tuple[str, ...] = ()  # packages whose factories model configs may name (python:pkg.mod:fn)

    def http_limits(self) -> HttpLimits:
        return HttpLimits(
            max_body=self.max_body_size,
            max_connections=self.max_connections,
            max_buffered_body=self.max_buffered_body,
            write_timeout=self.write_timeout,
        )

    def __post_init__(self) -> None:
        if self.cpus:
            parse_cpus(self.cpus)
        if self.max_queue < 1 or self.max_queue_delay < 0:
            raise ValueError("--max-queue must be at least 1 and --max-queue-delay cannot be negative")
        if self.models is None and self.remote_store is None:
            raise ValueError("give a model repository (--models) or a remote store (--remote-store), or both")
        if self.models is not None and not self.models.is_dir():
            raise ValueError(f"model repository {self.models} is not a directory")
        if not 0 <= self.port <= 65535 or not 0 <= self.grpc_port <= 65535:
            raise ValueError("ports must be in 0..65535")
        if self.grpc_max_message < 1:
            raise ValueError("the gRPC message limit must be positive")
        if self.threads < 0 or self.max_loads < 1 or self.max_body_size < 1 or self.drain_delay < 0:
            raise ValueError("threads, max loads and body size must be positive")
        if self.heap_trim_interval < 0:
            raise ValueError("--heap-trim-interval cannot be negative (0 turns it off)")
        if "\n" in self.worker_id:
            raise ValueError("worker id cannot hold a newline")
        if self.eviction not in POLICIES:
            raise ValueError(f"unknown eviction policy {self.eviction!r}; known: {', '.join(POLICIES)}")
        if self.device not in DEVICES and not _is_cuda(self.device):
            raise ValueError(f"unknown device {self.device!r}: use auto, none, stand-in, cuda or cuda:N")
        if self.cpu_memory.resolve(1 << 40) <= 0:
            raise ValueError("the CPU memory budget must be positive")
        if self.disk_cache <= 0 or self.rescan_interval < 0 or self.load_wait < 0:
            raise ValueError("the disk cache must be positive, intervals not negative")
        if self.remote_store is not None:
            _check_store_url(self.remote_store, self.remote_endpoint)
        elif self.remote_endpoint:
            raise ValueError("--remote-endpoint needs --remote-store s3://...")
        if self.admin_token is not None and not self.admin_token.strip():
            raise ValueError("the admin token cannot be empty")
        check_exposure(self.host, self.admin_token)
        object.__setattr__(self, "allow_code", parse_allowed(self.allow_code))
        if self.capacity < 0 or not self.register_ttl > 0:
            raise ValueError("capacity cannot be negative and the registration TTL must be positive")
        if self.register_redis is not None and not self.register_redis.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("--register-redis takes a redis:// URL")

    def advertised_url(self, port: int) -> str:
        """The base URL registered for balancers (``--advertise``, or where it listens)."""
        return self.advertise.rstrip("/") or f"http://{self.host}:{port}"

    @property
    def identity(self) -> str:
        """``--worker-id``, or ``host:port``; on a wildcard address (a container's 0.0.0.0) the
        host's name stands for the host, so replicas of one service never share an id."""
        if self.worker_id:
            return self.worker_id
        host = socket.gethostname() if self.host in WILDCARD_HOSTS else self.host
        return f"{host}:{self.port}"

    @property
    def inference_threads(self) -> int:
        return self.threads or os.cpu_count() or 1


def _is_cuda(device: str) -> bool:
    kind, _, index = device.partition(":")
    return kind == "cuda" and (not index or index.isdigit())


def _check_store_url(url: str, endpoint: str | None) -> None:
    parsed = urlparse(url)
    if parsed.scheme == "s3" and parsed.netloc:
        return
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost") and parsed.path:
        if endpoint:
            raise ValueError("--remote-endpoint only applies to s3:// stores")
        if not Path(parsed.path).is_dir():
            raise ValueError(f"remote store directory {parsed.path} does not exist")
        return
    raise ValueError(f"unsupported remote store {url!r}: use s3://bucket/prefix or file:///dir")
