"""``affinity loadgen``: open- or closed-loop load against a V2 endpoint, with
report and plots; ``--sweep RATES`` runs it at each rate and finds the knee;
``--compare REPORT...`` puts earlier runs side by side.

Only argparse here at import time: the generator (numpy, aiohttp, rich,
matplotlib) is imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.flags import Flags, size


def _models(text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",") if m.strip())


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "loadgen",
        help="open-loop load generator: latency from scheduled send times, report and plots",
        description="Load a V2 endpoint. Open loop by default (--rate, no coordinated omission); "
        "--concurrency N for a closed loop; --sweep R1,R2,... for a rate sweep; --compare for reports side by side.",
    )
    f = Flags(p, "loadgen")
    f.add("--url", "target base URL (a balancer or a worker)", default="http://127.0.0.1:8000")
    f.add("--rate", "open loop: requests per second, over all processes", type=float, default=100.0)
    f.add("--duration", "seconds measured", type=float, default=10.0)
    f.add("--warmup", "seconds of load before measuring (not in the report)", type=float, default=0.0)
    f.add("--concurrency", "closed loop with this many clients (0: open loop)", type=int, default=0)
    f.add("--arrivals", "open-loop arrivals: poisson or constant", default="poisson")
    f.add("--max-outstanding", "open loop: requests in flight at most; more are dropped and counted", type=int,
          default=1000)  # fmt: skip
    f.add("--protocol", "rest-json, rest-binary (binary tensor extension) or grpc (--url grpc://host:port)",
          default="rest-json")  # fmt: skip
    f.add("--popularity", "model choice: uniform, or zipf:S (rank k has weight 1/k**S)", default="uniform")
    f.add("--models", "comma-separated models (default: every model the target lists)", type=_models)
    f.add("--repeat", "probability that a request repeats an earlier payload (cache hits)", type=float, default=0.0)
    f.add("--payload-size", "tensor bytes per request, via batch rows within max_batch_size (0: one row)",
          type=size, default="0")  # fmt: skip
    f.add("--seed", "random seed for arrivals, models, payloads (default: a fresh one, in the report)", type=int)
    f.add("--processes", "generator processes (rate, concurrency and cap are split)", type=int, default=1)
    f.add("--timeout", "seconds for one request", type=float, default=30.0)
    f.add("--out", "directory for report.json and the plots", type=Path, default=Path("results/loadgen"))
    f.add("--sweep", "comma-separated rates: one run per rate, then the knee and a latency/load plot")
    f.add("--compare", "report.json files (or run directories) to compare instead of running", type=Path, nargs="+")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from loadgen.config import LoadConfig

    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 150)  # a file or pipe gets the whole table, not an 80-column squeeze
    if args.compare:
        from loadgen.compare import compare

        paths = args.compare if isinstance(args.compare, list) else [args.compare]  # one path from the env
        compare(paths, args.out, console)
        return 0
    config = LoadConfig(
        url=args.url,
        rate=args.rate,
        duration=args.duration,
        warmup=args.warmup,
        concurrency=args.concurrency,
        arrivals=args.arrivals,
        max_outstanding=args.max_outstanding,
        protocol=args.protocol,
        popularity=args.popularity,
        models=args.models or (),
        repeat=args.repeat,
        payload_size=args.payload_size,
        processes=args.processes,
        timeout=args.timeout,
        out=args.out,
        **({} if args.seed is None else {"seed": args.seed}),
    )
    from common.lifecycle import freeze_start_up_objects
    from loadgen.target import TargetError

    freeze_start_up_objects()  # this process is the generator: its full collections stall its sends less
    try:
        if args.sweep:
            from loadgen.sweep import parse_rates, run_sweep

            run_sweep(config, parse_rates(args.sweep), console)
            return 0
        from loadgen.progress import print_summary
        from loadgen.runner import run_once

        report, files = run_once(config)
        print_summary(console, report, files)
    except TargetError as exc:
        print(f"affinity loadgen: {exc}", file=sys.stderr)
        return 1
    return 0
