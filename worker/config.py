"""The worker's configuration: built once from flags, frozen, self-validating."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.http_limits import HttpLimits

# What a worker reports as its capacity (its weight on the balancer's ring) when
# neither --capacity nor a memory budget says otherwise.
DEFAULT_CAPACITY = 8 << 30


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    models: Path
    host: str = "127.0.0.1"
    port: int = 8100
    worker_id: str = ""  # default: host:port
    threads: int = 0  # inference threads; 0: all cores
    max_loads: int = 1
    max_body_size: int = 64 << 20
    max_connections: int = 4096
    max_buffered_body: int = 0  # request bodies held by the whole process; 0: max(256 MiB, 4 x max body)
    write_timeout: float = 30.0
    max_elements: int = 1 << 26
    shutdown_timeout: float = 30.0
    drain_delay: float = 0.0  # seconds not-ready but still serving after SIGTERM
    capacity: int = 0  # bytes reported to balancers (0: the memory budget, or DEFAULT_CAPACITY)
    register_redis: str | None = None  # keep a registration in this Redis (balancer --workers-redis)
    register_ttl: float = 10.0  # seconds a registration lives without a heartbeat
    advertise: str = ""  # the base URL balancers reach this worker at (default http://host:port)
    log_level: str = "INFO"

    def http_limits(self) -> HttpLimits:
        return HttpLimits(
            max_body=self.max_body_size,
            max_connections=self.max_connections,
            max_buffered_body=self.max_buffered_body,
            write_timeout=self.write_timeout,
        )

    def __post_init__(self) -> None:
        if not self.models.is_dir():
            raise ValueError(f"model repository {self.models} is not a directory")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be in 0..65535")
        if self.threads < 0 or self.max_loads < 1 or self.max_body_size < 1 or self.drain_delay < 0:
            raise ValueError("threads, max loads and body size must be positive")
        if "\n" in self.worker_id:
            raise ValueError("worker id cannot hold a newline")
        if self.capacity < 0 or not self.register_ttl > 0:
            raise ValueError("capacity cannot be negative and the registration TTL must be positive")
        if self.register_redis is not None and not self.register_redis.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("--register-redis takes a redis:// URL")

    @property
    def reported_capacity(self) -> int:
        return self.capacity or DEFAULT_CAPACITY

    def advertised_url(self, port: int) -> str:
        return self.advertise.rstrip("/") or f"http://{self.host}:{port}"

    @property
    def identity(self) -> str:
        return self.worker_id or f"{self.host}:{self.port}"

    @property
    def inference_threads(self) -> int:
        return self.threads or os.cpu_count() or 1
