"""The balancer's configuration: built once from flags, frozen, self-validating."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from common.http_limits import HttpLimits

POLICIES = ("affinity", "consistent")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://")


def worker_url(url: str) -> str:
    """The base URL of a worker given as ``http://host:port`` or ``host:port``.

    Only an address: the worker's id (the name on the ring and in X-Served-By)
    comes from the worker itself, never from the URL it was reached at."""
    raw = url.strip().rstrip("/")
    if "://" not in raw:
        raw = "http://" + raw
    parts = urlsplit(raw)
    if parts.scheme != "http" or not parts.hostname or parts.port is None or parts.path not in ("",):
        raise ValueError(f"worker {url!r} is not of the form http://host:port")
    return f"http://{parts.hostname}:{parts.port}"


@dataclass(frozen=True, slots=True)
class BalancerConfig:
    workers: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 8001  # 0: no gRPC front
    grpc_max_message: int = 4 << 20  # largest gRPC message received or sent (gRPC's default)
    policy: str = "affinity"
    balance_factor: float = 1.25
    redis_url: str | None = None
    cache_size: int = 256 << 20
    cache_ttl: float = 3600
    cache_max_entry: int = 1 << 20
    cache_lock_timeout: float = 5.0  # longest wait for another balancer computing the same answer
    redis_timeout: float = 0.1  # per Redis call
    redis_breaker_cooldown: float = 30.0  # seconds the breaker stays open before probing Redis again
    max_body_size: int = 64 << 20
    max_connections: int = 4096
    max_buffered_body: int = 0  # request bodies held by the whole process; 0: max(256 MiB, 4 x max body)
    write_timeout: float = 30.0
    max_upstream_answer: int = 64 << 20
    connect_timeout: float = 1.0
    try_timeout: float = 60.0
    max_retries: int = 2
    index_refresh: float = 10.0
    upstream_connections: int = 512
    shutdown_timeout: float = 30.0
    drain_delay: float = 0.0  # seconds not-ready but still serving after SIGTERM
    log_level: str = "INFO"

    def http_limits(self) -> HttpLimits:
        return HttpLimits(
            max_body=self.max_body_size,
            max_connections=self.max_connections,
            max_buffered_body=self.max_buffered_body,
            write_timeout=self.write_timeout,
        )

    def __post_init__(self) -> None:
        if not self.workers:
            raise ValueError("at least one worker is needed (--workers http://host:port,...)")
        object.__setattr__(self, "workers", tuple(dict.fromkeys(worker_url(u) for u in self.workers)))
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose from {', '.join(POLICIES)}")
        if self.balance_factor <= 0:
            raise ValueError("balance factor must be above 0")
        if not 0 <= self.port <= 65535 or not 0 <= self.grpc_port <= 65535:
            raise ValueError("ports must be in 0..65535")
        if self.grpc_max_message < 1:
            raise ValueError("the gRPC message limit must be positive")
        if self.max_retries < 0 or self.cache_ttl < 1 or self.try_timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("retries, TTL and timeouts must be positive")
        if self.drain_delay < 0:
            raise ValueError("drain delay cannot be negative")
        if self.redis_url is not None and not self.redis_url.startswith(REDIS_SCHEMES):
            raise ValueError(f"redis URL must start with one of {', '.join(REDIS_SCHEMES)}")
        if self.cache_lock_timeout <= 0 or self.redis_timeout <= 0 or self.redis_breaker_cooldown <= 0:
            raise ValueError("the cache lock timeout, Redis timeout and breaker cooldown must be positive")
