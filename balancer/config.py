"""The balancer's configuration: built once from flags, frozen, self-validating."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from balancer.dns import split_host_port
from balancer.health import HealthSettings
from balancer.policy import DEFAULT_BALANCE_FACTOR, DEFAULT_COLD_SPILL_SLACK, POLICIES
from balancer.replicas import ReplicaSettings
from balancer.router import RouterSettings
from common.api_keys import ApiKeys
from common.auth import check_exposure
from common.http_limits import HttpLimits

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
    workers: tuple[str, ...] = ()  # static discovery: worker base URLs
    workers_dns: str | None = None  # DNS discovery: name:port
    dns_resolver: str | None = None  # host:port of the DNS server to ask (default: the system's)
    workers_redis: str | None = None  # Redis discovery: the registry's URL
    discovery_interval: float = 5.0  # seconds between membership refreshes
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 8001  # 0: no gRPC front
    grpc_max_message: int = 4 << 20  # largest gRPC message received or sent (gRPC's default)
    policy: str = "affinity"
    balance_factor: float = DEFAULT_BALANCE_FACTOR
    cold_spill_slack: int = DEFAULT_COLD_SPILL_SLACK
    admin_token: str | None = field(default=None, repr=False)
    redis_url: str | None = None
    cache_size: int = 256 << 20
    cache_ttl: float = 3600
    cache_max_entry: int = 1 << 20
    upstream_encoding: str = "json"  # how a JSON request's tensors travel to a worker: json or binary
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
    request_timeout: float = 60.0  # a request's deadline unless it sends X-Request-Timeout
    max_retries: int = 2
    retry_ratio: float = 0.2  # retries at most this share of requests over the window ...
    retry_floor: float = 10.0  # ... plus this many a second
    retry_window: float = 10.0
    max_inflight: int = 4096  # requests in flight through the balancer; past it, 503
    max_inflight_per_worker: int = 256  # per worker; past it, 503
    health_interval: float = 1.0  # seconds between probes of /v2/health/ready (0: no probes)
    health_timeout: float = 1.0
    healthy_threshold: int = 2  # probes passed in a row to come back
    unhealthy_threshold: int = 3  # probes failed in a row to go down
    eject_after: int = 5  # failed tries in a row that eject a worker
    ejection_time: float = 30.0  # first ejection; doubles each time in a row
    max_ejection_time: float = 300.0
    max_ejected: float = 25.0  # percent of workers that may be ejected at once (at least one)
    panic_threshold: float = 50.0  # percent: below it, fail fast for models whose owner is out (0: never)
    max_replicas: int = 4  # default cap on a hot model's replicas
    replica_inflight: float = 8.0  # sustained requests in flight per replica that add one
    replica_sustain: float = 3.0  # seconds a model must stay that hot
    replica_cooldown: float = 30.0  # seconds it must stay cool before a replica goes
    replica_trial: bool = True  # keep a new replica only if the model's answers got faster or more
    index_refresh: float = 10.0
    upstream_connections: int = 512
    shutdown_timeout: float = 30.0
    drain_delay: float = 0.0  # seconds not-ready but still serving after SIGTERM
    heap_trim_interval: float = 10.0  # seconds between checks that trim freed heap memory (0: never)
    processes: int = 1  # balancer processes sharing the ports (SO_REUSEPORT); metrics added up
    log_level: str = "INFO"
    api_keys: Path | None = None  # JSON key -> tenant; inference then needs a key
    tls_cert: Path | None = None  # PEM certificate (chain) of both fronts; with tls_key
    tls_key: Path | None = None
    keys: ApiKeys | None = field(default=None, repr=False, compare=False)  # loaded from api_keys

    def http_limits(self) -> HttpLimits:
        return HttpLimits(
            max_body=self.max_body_size,
            max_connections=self.max_connections,
            max_buffered_body=self.max_buffered_body,
            write_timeout=self.write_timeout,
        )

    def __post_init__(self) -> None:
        if not (self.workers or self.workers_dns or self.workers_redis):
            raise ValueError("name the workers: --workers http://host:port,..., --workers-dns or --workers-redis")
        object.__setattr__(self, "workers", tuple(dict.fromkeys(worker_url(u) for u in self.workers)))
        if self.workers_dns is not None:
            split_host_port(self.workers_dns, "--workers-dns")
        if self.dns_resolver is not None:
            split_host_port(self.dns_resolver, "--dns-resolver")
        if self.workers_redis is not None and not self.workers_redis.startswith(REDIS_SCHEMES[:3]):
            raise ValueError("--workers-redis takes a redis:// URL")
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose from {', '.join(POLICIES)}")
        if self.balance_factor <= 0:
            raise ValueError("balance factor must be above 0")
        if self.cold_spill_slack < 0:
            raise ValueError("cold-spill slack must be 0 or more")
        if not 0 <= self.port <= 65535 or not 0 <= self.grpc_port <= 65535:
            raise ValueError("ports must be in 0..65535")
        if self.grpc_max_message < 1:
            raise ValueError("the gRPC message limit must be positive")
        if self.max_retries < 0 or self.cache_ttl < 1 or self.try_timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("retries, TTL and timeouts must be positive")
        if not self.request_timeout > 0 or not self.discovery_interval > 0 or not self.health_timeout > 0:
            raise ValueError("the request timeout, discovery interval and health timeout must be positive")
        if self.health_interval < 0 or self.max_inflight < 1 or self.max_inflight_per_worker < 1:
            raise ValueError("the health interval cannot be negative; in-flight caps must be at least 1")
        if not 0 <= self.max_ejected <= 100 or not 0 <= self.panic_threshold <= 100:
            raise ValueError("--max-ejected and --panic-threshold are percentages")
        if self.processes < 1:
            raise ValueError("--processes must be at least 1")
        if self.drain_delay < 0:
            raise ValueError("drain delay cannot be negative")
        if self.heap_trim_interval < 0:
            raise ValueError("--heap-trim-interval cannot be negative (0 turns it off)")
        if self.redis_url is not None and not self.redis_url.startswith(REDIS_SCHEMES):
            raise ValueError(f"redis URL must start with one of {', '.join(REDIS_SCHEMES)}")
        if self.cache_lock_timeout <= 0 or self.redis_timeout <= 0 or self.redis_breaker_cooldown <= 0:
            raise ValueError("the cache lock timeout, Redis timeout and breaker cooldown must be positive")
        if self.admin_token is not None and not self.admin_token.strip():
            object.__setattr__(self, "admin_token", None)
        check_exposure(self.host, self.admin_token)
        if self.api_keys is not None:
            object.__setattr__(self, "keys", ApiKeys.load(self.api_keys))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        self.tls_context()  # a certificate that does not load is an error at start, not at the first client
        # the parts' own settings check the rest
        self.health_settings()
        self.replica_settings()

    def tls_context(self) -> ssl.SSLContext | None:
        """The REST front's server-side TLS context (None: plain HTTP)."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load the TLS certificate {self.tls_cert} and key {self.tls_key}: {exc}") from None
        context.set_alpn_protocols(["http/1.1"])
        return context

    def tls_pair(self) -> tuple[bytes, bytes] | None:
        """(key, certificate chain) as PEM bytes for the gRPC front (None: plaintext)."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        return self.tls_key.read_bytes(), self.tls_cert.read_bytes()

    def health_settings(self) -> HealthSettings:
        return HealthSettings(
            eject_after=self.eject_after,
            ejection_time=self.ejection_time,
            max_ejection_time=self.max_ejection_time,
            max_ejected_share=self.max_ejected / 100,
            rise=self.healthy_threshold,
            fall=self.unhealthy_threshold,
        )

    def replica_settings(self) -> ReplicaSettings:
        return ReplicaSettings(
            self.max_replicas, self.replica_inflight, self.replica_sustain, self.replica_cooldown, self.replica_trial
        )

    def router_settings(self) -> RouterSettings:
        return RouterSettings(self.max_retries, self.try_timeout, self.max_inflight, self.max_inflight_per_worker)
