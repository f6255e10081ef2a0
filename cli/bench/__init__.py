"""``affinity bench SCENARIO``: each scenario starts the local cluster it needs, runs,
prints its table (the rows docs/benchmarks.md keeps) and stops what it started.

Each scenario is a module here; its flags are declared below (so ``affinity
--help`` imports nothing heavy) and read ``AFFINITY_BENCH_<FLAG>`` like every
other command's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.flags import Flags, size


def _overhead(scenarios: argparse._SubParsersAction) -> None:
    p = scenarios.add_parser("overhead", help="the balancer's hit and miss paths next to nginx and direct, one run")
    f = Flags(p, "bench")
    f.add("--duration", "seconds per row", type=float, default=8.0)
    f.add("--connections", "concurrent keep-alive connections", type=int, default=32)
    f.add("--models", "model repository (default: a small generated zoo)", type=Path)
    f.add("--out", "directory for the table, its JSON and the chart", type=Path, default="results/bench-overhead")

    def run(args: argparse.Namespace) -> int:
        from cli.bench.overhead import run_overhead

        return run_overhead(args.duration, args.connections, args.models, args.out)

    p.set_defaults(run=run)


def _cache(scenarios: argparse._SubParsersAction) -> None:
    p = scenarios.add_parser("cache", help="cache hits against a bare Redis GET, misses, large bodies, repeat rates")
    f = Flags(p, "bench")
    f.add("--samples", "sequential requests per latency row", type=int, default=2000)
    f.add("--duration", "seconds of each load-generator run", type=float, default=8.0)
    f.add("--out", "directory for the tables, the charts and the load generator's reports", type=Path,
          default="results/bench-cache")  # fmt: skip

    def run(args: argparse.Namespace) -> int:
        from cli.bench.cache import run_cache

        return run_cache(args.samples, args.duration, args.out)

    p.set_defaults(run=run)


def _paging(scenarios: argparse._SubParsersAction) -> None:
    p = scenarios.add_parser("paging", help="a cold model's first answer vs a naive load and the copy floor")
    f = Flags(p, "bench")
    f.add("--size", "the model's size", type=size, default="1GiB")
    f.add("--arch", "the model's architecture", default="mlp")
    f.add("--trials", "trials per row (the median is reported)", type=int, default=3)
    f.add("--threads", "torch threads, in the worker and in this process", type=int, default=1)
    f.add("--out", "where the table, its JSON and the chart are written", type=Path, default="results/bench-paging")

    def run(args: argparse.Namespace) -> int:
        from cli.bench.paging import main_paging

        return main_paging(args.size, args.arch, args.trials, args.threads, args.out)

    p.set_defaults(run=run)


def _protocols(scenarios: argparse._SubParsersAction) -> None:
    p = scenarios.add_parser(
        "protocols", help="REST JSON vs REST binary vs gRPC through the balancer under open-loop load"
    )
    f = Flags(p, "bench")
    f.add("--duration", "seconds measured per rate", type=float, default=8.0)
    f.add("--warmup", "seconds of load before each rate is measured", type=float, default=1.0)
    f.add("--max-outstanding", "requests in flight at most (more are dropped)", type=int, default=64)
    f.add("--out", "directory for the tables, their JSON and the plots", type=Path, default="results/bench-protocols")

    def run(args: argparse.Namespace) -> int:
        from cli.bench.protocols import run_protocols

        return run_protocols(args.duration, args.warmup, args.max_outstanding, args.out)

    p.set_defaults(run=run)


def _routing(scenarios: argparse._SubParsersAction) -> None:
    p = scenarios.add_parser(
        "routing", help="the routing policies side by side on a cluster whose budgets hold half the models"
    )
    f = Flags(p, "bench")
    f.add("--duration", "seconds measured per row", type=float, default=15.0)
    f.add("--warmup", "seconds of load before each row is measured", type=float, default=15.0)
    f.add("--rate", "requests a second, Zipf 1.1 over the zoo", type=float, default=120.0)
    f.add("--skew-rate", "requests a second, Zipf 3 (one model takes ~83%)", type=float, default=160.0)
    f.add("--workers", "worker processes", type=int, default=3)
    f.add("--policies", "comma-separated policies", default="affinity,round-robin,consistent,least-loaded")
    f.add("--models", "model repository (default: a generated zoo of 8-32 MiB models)", type=Path)
    f.add("--zoo-count", "models in the generated zoo", type=int, default=24)
    f.add("--seed", "the load generator's seed (the same for every policy)", type=int, default=1)
    f.add("--balance-factor", "the balancers' --balance-factor (0: their default)", type=float, default=0.0)
    f.add("--cold-spill-slack", "the balancers' --cold-spill-slack (-1: their default)", type=int, default=-1)
    f.add("--scenarios", "comma-separated scenarios: zipf, skew", default="zipf,skew")
    f.add("--source", "where loads come from: repository (the page cache) or remote (a file:// store "
          "through a disk cache as small as the memory budget)", choices=("repository", "remote"),
          default="repository")  # fmt: skip
    f.add("--out", "directory for the reports and the table", type=Path, default="results/bench-routing")

    def run(args: argparse.Namespace) -> int:
        from balancer.policy import POLICIES
        from cli.bench.routing import SCENARIOS, run_routing

        policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
        unknown = [p for p in policies if p not in POLICIES]
        if unknown:
            raise ValueError(f"unknown policies {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
        scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
        if not scenarios or any(s not in SCENARIOS for s in scenarios):
            raise ValueError(f"--scenarios takes some of {', '.join(SCENARIOS)}")
        return run_routing(
            args.duration, args.warmup, args.rate, args.skew_rate, args.workers, policies, args.models,
            args.zoo_count, args.out, args.seed, args.balance_factor, args.cold_spill_slack, scenarios,
            args.source,
        )  # fmt: skip

    p.set_defaults(run=run)


def _soak(scenarios: argparse._SubParsersAction) -> None:
    p = scenarios.add_parser(
        "soak", help="minutes at 70%% of capacity: errors, and every process's RSS at start and end (not in CI)"
    )
    f = Flags(p, "bench")
    f.add("--duration", "minutes measured", type=float, default=10.0)
    f.add("--rate", "requests a second (0: measure capacity first, run at --share of it)", type=float, default=0.0)
    f.add("--share", "share of the measured capacity to run at", type=float, default=0.7)
    f.add("--warmup", "seconds of load before the window (RSS start is taken after it)", type=float, default=60.0)
    f.add("--cache-size", "the balancer's in-process cache (filled during the warm-up)", type=size, default="32MiB")
    f.add("--workers", "worker processes", type=int, default=2)
    f.add("--concurrency", "closed-loop clients of the capacity run", type=int, default=16)
    f.add("--sample", "seconds between RSS samples", type=float, default=5.0)
    f.add("--models", "model repository (default: a generated zoo of 8 models, 1-4 MiB)", type=Path)
    f.add("--out", "directory for the reports, soak.md and soak.json", type=Path, default="results/bench-soak")

    def run(args: argparse.Namespace) -> int:
        from cli.bench.soak import run_soak

        if not args.duration > 0 or args.rate < 0 or not 0 < args.share <= 1:
            raise ValueError("--duration must be positive, --rate not negative, --share in (0, 1]")
        return run_soak(
            args.duration, args.rate, args.share, args.warmup, args.workers, args.concurrency, args.models,
            args.out, args.sample, args.cache_size,
        )  # fmt: skip

    p.set_defaults(run=run)


def _throughput(scenarios: argparse._SubParsersAction) -> None:
    p = scenarios.add_parser(
        "throughput", help="twelve MLPs, every input different, 16 connections: the cluster vs one worker"
    )
    f = Flags(p, "bench")
    f.add("--duration", "seconds measured per row", type=float, default=10.0)
    f.add("--connections", "wrk's connections (closed loop)", type=int, default=16)
    f.add("--rate", "open-loop Poisson rate for its row (0: skip the row)", type=float, default=2500.0)
    f.add("--workers", "the cluster's workers", type=int, default=2)
    f.add("--out", "directory for the table, the chart and the open-loop report", type=Path,
          default="results/bench-throughput")  # fmt: skip

    def run(args: argparse.Namespace) -> int:
        from cli.bench.throughput import run_throughput

        return run_throughput(args.duration, args.connections, args.rate, args.workers, args.out)

    p.set_defaults(run=run)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks on a local cluster, one scenario at a time")
    scenarios = p.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for declare in (_overhead, _cache, _paging, _protocols, _routing, _throughput, _soak):
        declare(scenarios)
