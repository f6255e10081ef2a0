"""``affinity``: one console script, subcommands up, balancer, worker, models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from balancer.policy import DEFAULT_BALANCE_FACTOR, DEFAULT_COLD_SPILL_SLACK, POLICIES
from cli import bench as bench_cli
from cli import loadgen as loadgen_cli
from cli import models as models_cli
from cli import publish as publish_cli
from cli.flags import Flags, amount, config_from, names, size
from common import __version__
from common.auth import ADMIN_TOKEN_ENV


def _memory_flags(f: Flags, cpu: str | None, gpu: str | None) -> None:
    """The memory tiers' flags, the same for ``worker`` and for ``up`` (which hands them to every
    worker; its budget defaults are shares split between the workers)."""
    f.add("--cpu-memory", "CPU tier budget: a size, or a share of RAM", type=amount, default=cpu)
    f.add("--gpu-memory", "GPU tier budget: a size, or a share of the device's memory; 0: off", type=amount,
          default=gpu)  # fmt: skip
    f.add("--device", "GPU tier device: auto (CUDA when present), none, cuda[:N], stand-in (tests)", default="auto")
    f.add("--eviction", "eviction policy: lru or gds (GreedyDual-Size: reload cost per byte, aged)", default="lru")
    f.add("--disk-cache-dir", "directory for models downloaded from the remote store (default: a temp dir)", type=Path)
    f.add("--disk-cache", "disk cache budget", type=size, default="10GiB")
    f.add("--remote-store", "remote model store: s3://bucket/prefix or file:///dir")
    f.add("--remote-endpoint", "S3-compatible endpoint URL (MinIO, ...); credentials from AWS_* as boto3 reads them")
    f.add("--max-loads", "model loads at once", type=int, default=1)
    f.add("--rescan-interval", "seconds between repository and store rescans (0: at start and on load)",
          type=float, default=10.0)  # fmt: skip
    f.add("--admin-token", "token for the repository load/unload and /admin routes", env=ADMIN_TOKEN_ENV, secret=True)


def _code_flag(f: Flags) -> None:
    f.add("--allow-code", "packages whose factories models may name as python:package.module:factory "
          "(comma-separated, whole package names; default: none)", type=names, default=())  # fmt: skip


def _http_flags(f: Flags) -> None:
    """The HTTP server's limits, the same for both servers."""
    f.add("--max-body-size", "largest request body", type=size, default="64MiB")
    f.add("--max-connections", "open client connections (past it: 503)", type=int, default=4096)
    f.add("--max-buffered-body", "request bytes held by the process (0: max(256MiB, 4 bodies))", type=size, default="0")
    f.add("--write-timeout", "seconds an answer may wait for a client that does not read", type=float, default=30.0)


def _worker_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run one model server (V2 REST and gRPC)")
    f = Flags(p, "worker")
    f.add("--models", "model repository directory (<root>/<name>/<version>/), read-only", type=Path)
    f.add("--host", "address to listen on", default="127.0.0.1")
    f.add("--port", "HTTP port", type=int, default=8100)
    f.add("--grpc-port", "gRPC port (0: no gRPC)", type=int, default=8101)
    f.add("--grpc-max-message", "largest gRPC message received or sent", type=size, default="4MiB")
    f.add("--worker-id", "stable id on the ring and in X-Served-By (default host:port)", default="")
    f.add("--threads", "inference threads (0: all cores)", type=int, default=0)
    _memory_flags(f, "50%", "80%")
    _code_flag(f)
    f.add("--load-wait", "seconds a load waits for room held by models in use (then 503)", type=float, default=30.0)
    f.add("--max-queue", "requests queued per model (one more: 503 with Retry-After)", type=int, default=256)
    f.add("--cpus", "CPUs this worker runs on, e.g. 0 or 2-3 (empty: any)", default="")
    f.add("--max-queue-delay", "seconds a batch may wait for more requests, when it pays (0: never; batches "
          "still form while a forward runs)", type=float, default=0.0)  # fmt: skip
    _http_flags(f)
    f.add("--drain-delay", "seconds to report not-ready, still serving, after SIGTERM", type=float, default=0.0)
    f.add("--heap-trim-interval", "seconds between checks that give freed heap memory back (0: never)", type=float,
          default=10.0)  # fmt: skip
    f.add("--capacity", "capacity reported to balancers, its ring weight (0: the CPU budget)", type=size, default="0")
    f.add("--register-redis", "keep a registration (heartbeat key with a TTL) in this Redis for balancers to find")
    f.add("--register-ttl", "seconds a registration outlives its last heartbeat", type=float, default=10.0)
    f.add("--advertise", "base URL balancers reach this worker at (default http://host:port)", default="")
    f.add("--log-level", "log level", default="INFO")
    p.set_defaults(run=_run_worker)


def _balancer_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("balancer", help="run the balancer in front of running workers")
    f = Flags(p, "balancer")
    f.add("--workers", "static discovery: comma-separated worker URLs (http://host:port,...)", default="")
    f.add("--workers-dns", "DNS discovery: name:port, every A record of name is a worker (re-resolved)")
    f.add("--dns-resolver", "the DNS server to ask, host:port (default: the system resolver)")
    f.add("--workers-redis", "Redis discovery: the registry workers register in (--register-redis)")
    f.add("--discovery-interval", "seconds between membership refreshes", type=float, default=5.0)
    f.add("--host", "address to listen on", default="127.0.0.1")
    f.add("--port", "HTTP port", type=int, default=8000)
    f.add("--grpc-port", "gRPC port (0: no gRPC front)", type=int, default=8001)
    f.add("--grpc-max-message", "largest gRPC message received or sent", type=size, default="4MiB")
    f.add("--policy", f"routing policy: {', '.join(POLICIES)}", default="affinity", choices=POLICIES)
    f.add("--balance-factor", "bounded-load factor (1+e): a worker takes up to this times its share", type=float,
          default=DEFAULT_BALANCE_FACTOR)  # fmt: skip
    f.add("--cold-spill-slack", "a spill to a worker without the model waits instead while a home worker holding "
          "it has fewer than its cap plus this many requests in flight (0: off)", type=int,
          default=DEFAULT_COLD_SPILL_SLACK)  # fmt: skip
    f.add("--admin-token", "token the admin routes require, sent to the workers' repository routes",
          env=ADMIN_TOKEN_ENV, secret=True)  # fmt: skip
    f.add("--api-keys", "JSON file of API key -> tenant: inference then needs Authorization: Bearer <key>, "
          "and each tenant's answers are cached apart", type=Path)  # fmt: skip
    f.add("--tls-cert", "PEM certificate (chain) for TLS on the REST and gRPC fronts (with --tls-key)", type=Path)
    f.add("--tls-key", "PEM private key of --tls-cert", type=Path)
    f.add("--redis-url", "Redis URL for the shared cache layer (redis+cluster://host:port for a cluster)")
    f.add("--cache-size", "in-process cache size", type=size, default="256MiB")
    f.add(
        "--cache-ttl",
        "seconds an answer stays cached (a model's config may set its own)",
        type=float,
        default=3600,
    )
    f.add(
        "--cache-lock-timeout",
        "seconds to wait for another balancer computing an answer",
        type=float,
        default=5.0,
    )
    f.add("--cache-max-entry", "largest answer stored", type=size, default="1MiB")
    f.add("--redis-timeout", "seconds for one Redis call (a slower one is a miss)", type=float, default=0.1)
    f.add("--redis-breaker-cooldown", "seconds Redis is left alone after repeated failures", type=float, default=30.0)
    _http_flags(f)
    f.add("--max-upstream-answer", "largest answer read from a worker", type=size, default="64MiB")
    f.add(
        "--upstream-encoding",
        "how a JSON request's tensors travel to a worker: json (the body as it came) or binary "
        "(the binary tensor extension, packed once here)",
        default="json",
        choices=("binary", "json"),
    )
    f.add("--connect-timeout", "seconds to connect to a worker", type=float, default=1.0)
    f.add("--try-timeout", "seconds for one try at a worker", type=float, default=60.0)
    f.add("--request-timeout", "a request's deadline unless it sends X-Request-Timeout", type=float, default=60.0)
    f.add("--max-retries", "tries on further workers after a failed one", type=int, default=2)
    f.add("--retry-ratio", "retry budget: retries at most this share of requests ...", type=float, default=0.2)
    f.add("--retry-floor", "... plus this many retries a second", type=float, default=10.0)
    f.add("--retry-window", "seconds the retry budget looks back", type=float, default=10.0)
    f.add("--max-inflight", "requests in flight through the balancer; past it, 503", type=int, default=4096)
    f.add("--max-inflight-per-worker", "requests in flight per worker; past it, 503", type=int, default=256)
    f.add("--health-interval", "seconds between probes of /v2/health/ready (0: none)", type=float, default=1.0)
    f.add("--health-timeout", "seconds a probe may take", type=float, default=1.0)
    f.add("--healthy-threshold", "probes passed in a row to come back", type=int, default=2)
    f.add("--unhealthy-threshold", "probes failed in a row to go down", type=int, default=3)
    f.add("--eject-after", "failed tries in a row that eject a worker", type=int, default=5)
    f.add("--ejection-time", "seconds of a first ejection (doubles each time in a row)", type=float, default=30.0)
    f.add("--max-ejection-time", "longest ejection", type=float, default=300.0)
    f.add("--max-ejected", "percent of workers that may be ejected at once (at least one)", type=float, default=25.0)
    f.add("--panic-threshold", "percent healthy below which models whose owner is out fail fast", type=float,
          default=50.0)  # fmt: skip
    f.add("--max-replicas", "most workers a hot model spreads over (a model's config may say)", type=int, default=4)
    f.add("--replica-inflight", "sustained requests in flight per replica that add one", type=float, default=8.0)
    f.add("--replica-sustain", "seconds a model must stay hot before a replica is added", type=float, default=3.0)
    f.add("--replica-cooldown", "seconds a model must stay cool before a replica goes", type=float, default=30.0)
    f.add(
        "--replica-trial",
        "keep a new replica only if the model's answers a second rose or its mean time in the balancer "
        "fell by 10% over a trial (it may not pay where workers share cores)",
        action=argparse.BooleanOptionalAction,
        default=True,
    )
    f.add("--index-refresh", "seconds between repository index refreshes", type=float, default=10.0)
    f.add("--processes", "balancer processes sharing the ports (SO_REUSEPORT), metrics added up", type=int, default=1)
    f.add("--drain-delay", "seconds to report not-ready, still serving, after SIGTERM", type=float, default=0.0)
    f.add("--heap-trim-interval", "seconds between checks that give freed heap memory back (0: never)", type=float,
          default=10.0)  # fmt: skip
    f.add("--log-level", "log level", default="INFO")
    p.set_defaults(run=_run_balancer)


def _up_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="run a local cluster: N workers and a balancer")
    f = Flags(p, "up")
    f.add("--workers", "worker processes", type=int, default=2)
    f.add("--balancer-processes", "balancer processes sharing its port", type=int, default=1)
    f.add(
        "--cpu-affinity",
        "pin each worker to its own share of the cores (on by default when each gets at least one)",
        action=argparse.BooleanOptionalAction,
        default=True,
    )
    f.add("--models", "model repository (default: a demo zoo generated in a temp dir)", type=Path)
    f.add("--host", "address to listen on", default="127.0.0.1")
    f.add("--port", "balancer HTTP port (0: any free port)", type=int, default=8000)
    f.add("--grpc-port", "balancer gRPC port (0: no gRPC)", type=int, default=8001)
    f.add("--policy", f"routing policy: {', '.join(POLICIES)}", default="affinity", choices=POLICIES)
    f.add("--redis-url", "Redis URL for the shared cache layer (default: in-process only)")
    f.add("--cache-size", "balancer in-process cache size", type=size, default="256MiB")
    f.add("--zoo-count", "models in a generated demo zoo", type=int, default=12)
    f.add("--zoo-max-size", "largest model in a generated demo zoo", type=size, default="16MiB")
    _memory_flags(f, None, None)
    _code_flag(f)
    f.add("--log-level", "log level for every process", default="WARNING")
    p.set_defaults(run=_run_up)


def _models_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="model repository tools")
    msub = p.add_subparsers(dest="models_command", required=True)
    make = msub.add_parser("make", help="generate a demo zoo of real models with random weights")
    f = Flags(make, "models")
    f.add("--out", "directory to write the repository into", type=Path, required=True)
    f.add("--count", "number of models", type=int, default=12)
    f.add("--min-size", "smallest model", type=size, default="1MiB")
    f.add("--max-size", "largest model", type=size, default="16MiB")
    f.add("--sizes", "explicit comma-separated sizes, cycled (overrides min/max)")
    f.add("--archs", "comma-separated architectures, cycled", default="mlp,cnn,transformer,logreg")
    f.add("--seed", "random seed (same seed, same zoo)", type=int, default=0)
    make.set_defaults(run=_run_models_make)
    models_cli.add_parsers(msub)
    publish_cli.add_parser(msub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="affinity", description="affinity-serve: model-affinity load balancing")
    parser.add_argument("--version", action="version", version=f"affinity-serve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _up_parser(sub)
    _balancer_parser(sub)
    _worker_parser(sub)
    _models_parser(sub)
    bench_cli.add_parser(sub)
    loadgen_cli.add_parser(sub)
    return parser


def _run_worker(args: argparse.Namespace) -> int:
    from common.lifecycle import run
    from common.logs import setup_logging
    from worker.app import serve
    from worker.config import WorkerConfig

    config = config_from(WorkerConfig, args)
    setup_logging("worker", args.log_level)
    return run(serve(config))


def _run_balancer(args: argparse.Namespace) -> int:
    from balancer.app import serve
    from balancer.config import BalancerConfig
    from common.lifecycle import run
    from common.logs import setup_logging
    from common.process import free_port

    workers = tuple(w for w in (args.workers or "").split(",") if w.strip())
    if args.processes > 1 and args.port == 0:  # processes share one port: pick it once, here
        args.port = free_port(args.host)
    config = config_from(BalancerConfig, args, workers=workers)
    setup_logging("balancer", args.log_level)
    if config.processes > 1:
        from balancer.app import serve_processes

        return serve_processes(config)
    return run(serve(config))


def _run_up(args: argparse.Namespace) -> int:
    from cli.up import Cluster, UpOptions

    return Cluster(config_from(UpOptions, args)).run()


def _run_models_make(args: argparse.Namespace) -> int:
    from common.units import format_size, parse_size
    from worker.zoo import make_zoo

    sizes = [parse_size(s) for s in args.sizes.split(",")] if args.sizes else None
    archs = tuple(a.strip() for a in args.archs.split(",") if a.strip())
    made = make_zoo(args.out, args.count, args.min_size, args.max_size, sizes, archs, args.seed)
    for model in made:
        print(f"{model.name:20s} {model.architecture:12s} {format_size(model.size_bytes):>10s}  {model.path}")
    print(f"{len(made)} models written to {args.out}")
    return 0


def entry() -> NoReturn:
    """The console script: ``main``, then the process ends without the interpreter's
    teardown (``common.lifecycle.exit_promptly``: ~0.9 s once torch was imported)."""
    from common.lifecycle import exit_promptly

    exit_promptly(main())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ValueError as exc:
        print(f"affinity {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"affinity {args.command}: {exc.strerror or exc}", file=sys.stderr)
        return 1
