"""``affinity bench protocols``: REST JSON vs REST binary vs gRPC through the
balancer, in one run.

Two identity models on a local cluster (two workers, one balancer, pure ring):
a small tensor (FP32 [1, 256], 1 KiB) and a large one (FP32 [1, 262144],
1 MiB). For each size and protocol, ``affinity loadgen``'s open loop (Poisson
arrivals, latency from each request's scheduled send, every body unique so
every request is computed by a worker) runs at increasing rates; each row is
one rate's achieved throughput and p50/p99. Saturation is the highest
achieved throughput over the rates. The generator shares the machine with the
cluster, so only ratios within the run mean anything.

Where the time goes: the per-request CPU cost of each protocol's own steps,
measured in this process on the same tensors: the balancer keying the request
(parse and hash), the worker decoding it and encoding its answer, and the
generator's own cost per request from its report.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from cli.up import Cluster, UpOptions, free_port

PROTOCOLS = ("rest-json", "rest-binary", "grpc")
SIZES = {"1 KiB": ("identity-1k", 256), "1 MiB": ("identity-1m", 262144)}
RATES = {"1 KiB": (250.0, 500.0, 1000.0, 2000.0, 4000.0), "1 MiB": (10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)}
GOALS = (
    ("1 MiB", "rest-binary", "rest-json", 3.0),
    ("1 MiB", "grpc", "rest-binary", 1.0),
)


@dataclass(frozen=True, slots=True)
class Row:
    size: str
    protocol: str
    offered: float
    achieved: float
    p50_ms: float
    p99_ms: float
    errors: int
    dropped: int
    generator_us: float


def make_models(root: Path) -> None:
    from worker.zoo import make_model

    for name, width in SIZES.values():
        make_model(root, name, "identity", {"datatype": "FP32", "width": width}, 0)


def run_protocols(duration: float, warmup: float, max_outstanding: int, out: Path) -> int:
    from loadgen.config import LoadConfig
    from loadgen.runner import run_once

    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        models = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="affinity-bench-")))
        make_models(models)
        options = UpOptions(workers=2, models=models, port=0, grpc_port=free_port(), policy="consistent")
        cluster = Cluster(options)
        stack.callback(cluster.stop)
        endpoint = cluster.start(models)
        assert cluster.grpc_endpoint is not None
        quiet = Console(file=io.StringIO())
        for size, (model, _) in SIZES.items():
            for protocol in PROTOCOLS:
                url = f"grpc://{cluster.grpc_endpoint}" if protocol == "grpc" else endpoint
                for rate in RATES[size]:
                    config = LoadConfig(
                        url=url, rate=rate, duration=duration, warmup=warmup, protocol=protocol,
                        models=(model,), max_outstanding=max_outstanding, timeout=30.0,
                    )  # fmt: skip
                    report, _ = run_once(config, console=quiet)
                    c = report.counts
                    row = Row(
                        size, protocol, rate, report.achieved_rps, report.latency_ms.p50, report.latency_ms.p99,
                        c.errors, c.dropped, report.generator.cpu_per_request_us,
                    )  # fmt: skip
                    rows.append(row)
                    print(_row_line(row), flush=True)
                    if report.achieved_rps < 0.6 * rate:  # well past saturation: higher rates only drop more
                        break
    text = report_text(rows, costs(), duration, warmup, max_outstanding)
    print()
    for path in write_outputs(rows, text, out):
        print(f"wrote {path}")
    print(text)
    return 0


def write_outputs(rows: list[Row], text: str, out: Path) -> list[Path]:
    """protocols.md (the tables), protocols.json (every rate's row),
    protocols-throughput.png and protocols-p99.png: achieved throughput and p99
    against offered load, one line per protocol, one column per tensor size."""
    from dataclasses import asdict

    from cli.bench.charts import curves
    from cli.bench.outputs import write_table

    written = write_table(out, "protocols", text, [asdict(r) for r in rows])
    sizes = list(dict.fromkeys(r.size for r in rows))
    if not sizes:
        return written

    def series(size: str, attr: str) -> dict[str, list[tuple[float, float]]]:
        return {
            protocol: [(r.offered, getattr(r, attr)) for r in rows if (r.size, r.protocol) == (size, protocol)]
            for protocol in dict.fromkeys(r.protocol for r in rows)
        }

    achieved = [(f"{size}: throughput", "achieved req/s", series(size, "achieved"), False) for size in sizes]
    tails = [(f"{size}: p99 latency", "ms, log scale", series(size, "p99_ms"), True) for size in sizes]
    title = "REST JSON vs REST binary vs gRPC through the balancer (open loop, Poisson)"
    plot = curves(out / "protocols-throughput.png", title, achieved, "offered req/s (log scale)", len(sizes), True)
    written.append(plot)
    written.append(curves(out / "protocols-p99.png", title, tails, "offered req/s (log scale)", len(sizes)))
    return written


def _row_line(r: Row) -> str:
    return (
        f"| {r.size} | {r.protocol} | {r.offered:,.0f} | {r.achieved:,.1f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
        f"| {r.errors} | {r.dropped} |"
    )


def _per_call_us(work: Callable[[], Any], seconds: float = 0.3) -> float:
    work()
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        work()
        count += 1
    return (time.perf_counter() - started) / count * 1e6


def costs() -> dict[tuple[str, str], tuple[float, float, float]]:
    """(balancer keying, worker decoding, worker encoding) in microseconds per
    request, per size and protocol, on this machine."""
    out: dict[tuple[str, str], tuple[float, float, float]] = {}
    for size, (_, width) in SIZES.items():
        for protocol, cost in _costs_at(width).items():
            out[(size, protocol)] = cost
    return out


def _costs_at(width: int) -> dict[str, tuple[float, float, float]]:
    import numpy as np
    import orjson

    from balancer.caching import derive_key
    from balancer.plan import InferCall
    from cache.keys import KeyScope, key_request, typed_key
    from protocol.grpc_codec import request_message
    from protocol.grpc_messages import parse_request
    from protocol.json_codec import encode_binary_request, encode_infer_request
    from protocol.types import InferRequest, InferResponse, Tensor
    from worker.codecs import BINARY_CODEC, GRPC_CODEC, JSON_CODEC

    scope = KeyScope("m", "1", "w")
    data = np.random.default_rng(0).random((1, width), dtype=np.float64).astype(np.float32)
    request = InferRequest([Tensor("input", "FP32", (1, width), data)])
    response = InferResponse("m", [Tensor("output", "FP32", (1, width), data)], "1")
    as_json = encode_infer_request(request)
    binary = encode_binary_request(request)
    as_grpc = request_message(request, "m").SerializeToString()
    decoded_binary = BINARY_CODEC.decode(binary, 1 << 26)
    binary_call = InferCall("m", None, binary[0], "", encoding="binary", header_length=binary[1])

    def grpc_key() -> None:
        derive_key(InferCall("m", None, as_grpc, "", encoding="grpc", message=parse_request(as_grpc)), scope)

    return {
        "rest-json": (
            _per_call_us(lambda: typed_key(scope, key_request(orjson.loads(as_json)))),
            _per_call_us(lambda: JSON_CODEC.decode(as_json, 1 << 26)),
            _per_call_us(lambda: JSON_CODEC.encode(response, request)),
        ),
        "rest-binary": (
            _per_call_us(lambda: derive_key(binary_call, scope)),
            _per_call_us(lambda: BINARY_CODEC.decode(binary, 1 << 26)),
            _per_call_us(lambda: BINARY_CODEC.encode(response, decoded_binary)),
        ),
        "grpc": (
            _per_call_us(grpc_key),
            _per_call_us(lambda: GRPC_CODEC.decode(as_grpc, 1 << 26)),
            _per_call_us(lambda: GRPC_CODEC.encode(response, request)),
        ),
    }


def report_text(
    rows: list[Row],
    cost: dict[tuple[str, str], tuple[float, float, float]],
    duration: float,
    warmup: float,
    max_outstanding: int,
) -> str:
    lines = [
        f"`affinity bench protocols` on {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}: identity FP32 models, 2 workers, open-loop Poisson, "
        f"{warmup:g} s warm-up + {duration:g} s per rate, at most {max_outstanding} outstanding",
        "",
        "| tensor | protocol | offered req/s | achieved req/s | p50 ms | p99 ms | errors | dropped |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(_row_line(r) for r in rows),
        "",
        "| tensor | protocol | saturation req/s | balancer keying us | worker decode us | worker encode us "
        "| generator us/req |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    best: dict[tuple[str, str], float] = {}
    for r in rows:
        best[(r.size, r.protocol)] = max(best.get((r.size, r.protocol), 0.0), r.achieved)
    for size in SIZES:
        for protocol in PROTOCOLS:
            key_us, decode_us, encode_us = cost.get((size, protocol), (0.0, 0.0, 0.0))
            generator = max((r.generator_us for r in rows if (r.size, r.protocol) == (size, protocol)), default=0.0)
            lines.append(
                f"| {size} | {protocol} | {best.get((size, protocol), 0.0):,.1f} | {key_us:,.1f} | {decode_us:,.1f} "
                f"| {encode_us:,.1f} | {generator:,.0f} |"
            )
    lines += ["", "| ratio at saturation (same run) | measured | goal |", "| --- | ---: | ---: |"]
    for size, protocol, reference, goal in GOALS:
        if best.get((size, reference)):
            ratio = best.get((size, protocol), 0.0) / best[(size, reference)]
            lines.append(f"| {size}: {protocol} / {reference} | {ratio:.2f}x | >= {goal:g}x |")
    for protocol in ("rest-binary", "grpc"):
        if best.get(("1 KiB", "rest-json")):
            ratio = best.get(("1 KiB", protocol), 0.0) / best[("1 KiB", "rest-json")]
            lines.append(f"| 1 KiB: {protocol} / rest-json | {ratio:.2f}x | (reported) |")
    return "\n".join(lines)
