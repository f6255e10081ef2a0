"""``affinity bench paging``: a cold model's first answer, next to the naive path and the floor.

One model of ``--size`` (default 1 GiB, an MLP) is generated in a temporary
directory, with a ``torch.save``'d copy of its state dict for the naive path
(written here, deleted after; loaded with ``weights_only=True``). Rows, each the
median of ``--trials``, all in one run:

  cold start, page cache   a running worker (``--threads``; process warm-up done)
                           unloads the model (``POST .../unload``); the weights
                           file is in the page cache; the time is a client's,
                           over HTTP, from sending the first request to its answer
  (a) naive                in this process, torch warmed up: build the module with
                           default initialisation, ``torch.load`` the state dict,
                           ``load_state_dict``, one inference
  (b) floor                copy the weights file's bytes into fresh memory, plus
                           one steady inference over HTTP (the worker, model resident)
  cold start, disk-cold    as the first row, after ``posix_fadvise(DONTNEED)`` on
                           the weights (the fraction of the file still cached is shown)
  steady, mapped / copied  one inference in this process on the mapped weights and
                           on a copy in fresh memory, interleaved

Goals: the cold start at least 5x faster than (a), within 1.5x of (b); mapped
and copied steady inference alike. Every torch here runs on ``--threads``
threads, as the worker's inference does.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from common.process import affinity_command, free_port, spawn, stop, wait_ready
from common.units import format_size

GOALS = {"naive_over_cold": 5.0, "cold_over_floor": 1.5}


def _post(url: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})  # noqa: S310 - our own http:// URL
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:  # noqa: S310 - our own http:// URL
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def cached_fraction(path: Path) -> float | None:
    """How much of ``path`` is in the page cache (mincore over a private mapping), None if unknown."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        size = path.stat().st_size
        page = mmap.PAGESIZE
        pages = (size + page - 1) // page
        with open(path, "rb") as f:
            mapping = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
        try:
            anchor = ctypes.c_char.from_buffer(mapping)
            vec = (ctypes.c_ubyte * pages)()
            ok = libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(size), vec) == 0
            del anchor
        finally:
            mapping.close()
    except (OSError, AttributeError, ValueError):
        return None
    return sum(v & 1 for v in vec) / pages if ok else None


def _read_all(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def _drop_from_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _request_body(config: Any) -> bytes:
    import numpy as np

    rng = np.random.default_rng(0)
    inputs = []
    for spec in config.inputs:
        shape = [1 if d == -1 else d for d in spec.shape]
        count = int(np.prod(shape))
        data = [0] * count if spec.datatype.startswith("INT") else rng.standard_normal(count).round(4).tolist()
        inputs.append({"name": spec.name, "datatype": spec.datatype, "shape": shape, "data": data})
    return orjson.dumps({"inputs": inputs})


def run_paging(size: int, architecture: str, trials: int, threads: int, out: Path) -> int:
    import torch
    from safetensors.torch import load_file

    from worker.architectures import ARCHITECTURES
    from worker.loader import read_config
    from worker.paging import TorchPager, run_on, synthetic_inputs
    from worker.runner import LoadedModel
    from worker.warmup import warm_up_process
    from worker.zoo import args_for, make_model

    torch.set_num_threads(threads)
    rows: dict[str, list[float]] = {}
    notes: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="affinity-bench-paging-")))
        print(f"generating a {format_size(size)} {architecture} model in {tmp} ...", flush=True)
        made = make_model(tmp / "models", "big", architecture, args_for(architecture, size), seed=0)
        weights = made.path / "model.safetensors"
        config = read_config("big", made.path)
        pickled = tmp / "state_dict.pt"  # the naive path's input: written here, deleted with tmp
        torch.save(load_file(weights), pickled)
        body = _request_body(config)
        model_bytes = TorchPager().weights_bytes(("big", "1"), made.path)
        notes.update(model=made.name, architecture=architecture, args=made_args(made.path), bytes=model_bytes)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = stack.enter_context(open(tmp / "worker.log", "wb"))
        worker_args = ["worker", "--models", str(tmp / "models"), "--port", str(port), "--grpc-port", "0"]
        worker_args += ["--threads", str(threads)]
        worker_args += ["--cpu-memory", str(3 * model_bytes), "--rescan-interval", "0", "--log-level", "WARNING"]
        worker = spawn(affinity_command(*worker_args), output=log)
        stack.callback(stop, [worker])
        wait_ready(base + "/v2/health/ready", worker)
        infer_url = f"{base}/v2/models/big/infer"

        def cold_request(disk_cold: bool) -> float:
            status, _, _ = _post(f"{base}/v2/repository/models/big/unload")
            if status != 200:
                raise RuntimeError(f"unload answered {status}")
            if disk_cold:
                _drop_from_cache(weights)
                notes.setdefault("cached_fraction_after_fadvise", []).append(cached_fraction(weights))
            else:
                _read_all(weights)
            seconds, (status, headers, answer) = _timed(lambda: _post(infer_url, body))
            if status != 200 or headers.get("X-Model-Source") != "disk":
                raise RuntimeError(f"cold request: {status} from {headers.get('X-Model-Source')}: {answer[:200]!r}")
            return seconds

        _read_all(weights)
        first, (status, headers, _) = _timed(lambda: _post(infer_url, body))
        if status != 200 or headers.get("X-Model-Source") != "disk":
            raise RuntimeError(f"the first request answered {status} from {headers.get('X-Model-Source')}")
        rows["first request after the worker started, page cache"] = [first]
        rows["cold start, page cache"] = [cold_request(False) for _ in range(trials)]
        notes["cached_fraction_before"] = cached_fraction(weights)
        rows["steady inference over HTTP"] = [_timed(lambda: _post(infer_url, body))[0] for _ in range(2 * trials)]
        rows["cold start, disk-cold"] = [cold_request(True) for _ in range(trials)]
        stop([worker])

        warm_up_process()  # this process pays torch's one-time set-up before timing, as the worker did
        mapped = TorchPager().load(("big", "1"), made.path)
        arrays = synthetic_inputs(mapped)

        def naive() -> None:
            module = ARCHITECTURES[architecture].build(config.args)  # default initialisation
            state = torch.load(pickled, weights_only=True)
            module.load_state_dict(state)
            module.eval()
            run_on(LoadedModel("big", "1", config, module), arrays, None)

        _read_all(pickled)
        rows["(a) naive: init, torch.load, load_state_dict, infer"] = [_timed(naive)[0] for _ in range(trials)]

        def copy_bytes() -> None:
            buffer = mmap.mmap(-1, weights.stat().st_size)  # fresh anonymous memory, faulted in by the copy
            with buffer, open(weights, "rb", buffering=0) as f:
                f.readinto(buffer)

        _read_all(weights)
        rows["copy the weights into fresh memory"] = [_timed(copy_bytes)[0] for _ in range(trials)]

        copied = LoadedModel("big", "1", config, _copied(mapped.module, config))
        for model in (mapped, copied):
            run_on(model, arrays, None)
        steady_mapped = rows["steady inference, mapped weights (in-process)"] = []
        steady_copied = rows["steady inference, copied weights (in-process)"] = []
        for _ in range(3 * trials):  # interleaved, so drift hits both alike
            steady_mapped.append(_timed(lambda: run_on(mapped, arrays, None))[0])
            steady_copied.append(_timed(lambda: run_on(copied, arrays, None))[0])

    median = {label: statistics.median(times) for label, times in rows.items()}
    floor = median["copy the weights into fresh memory"] + median["steady inference over HTTP"]
    median["(b) floor: copy + one steady inference"] = floor
    table = report(rows, median, notes, threads, trials)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "paging.md").write_text(table + "\n")
    summary = {"median_seconds": median, "trials_seconds": rows, "notes": notes, "threads": threads}
    (out / "paging.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot = chart(median, notes, out / "paging.png")
    print(f"written to {out / 'paging.md'}, {out / 'paging.json'} and {plot}")
    return 0


def chart(median: dict[str, float], notes: dict[str, Any], path: Path) -> Path:
    """The table's medians as bars (log scale: loads take seconds, steady answers milliseconds);
    the references a cold start is measured against in grey."""
    from cli.bench.charts import bars

    rows = [(label, median[label] * 1e3) for label in ROW_ORDER if label in median]
    references = ("(a) naive: init, torch.load, load_state_dict, infer", "(b) floor: copy + one steady inference",
                  "copy the weights into fresh memory")  # fmt: skip
    title = f"A cold model's first answer: {notes['architecture']}, {notes['bytes'] / 2**30:.2f} GiB (median)"
    return bars(path, title, rows, "milliseconds, log scale", references, log=True)


ROW_ORDER = (
    "first request after the worker started, page cache",
    "cold start, page cache",
    "(a) naive: init, torch.load, load_state_dict, infer",
    "(b) floor: copy + one steady inference",
    "copy the weights into fresh memory",
    "steady inference over HTTP",
    "cold start, disk-cold",
    "steady inference, mapped weights (in-process)",
    "steady inference, copied weights (in-process)",
)


def made_args(directory: Path) -> dict[str, Any]:
    return dict(orjson.loads((directory / "config.json").read_bytes())["args"])


def _copied(module: Any, config: Any) -> Any:
    """The module again, every tensor copied into fresh memory (what a plain load_state_dict holds)."""
    from worker.loader import copy_module

    return copy_module("big", config, module, lambda t: t.clone())


def report(
    rows: dict[str, list[float]], median: dict[str, float], notes: dict[str, Any], threads: int, trials: int
) -> str:
    cold = median["cold start, page cache"]
    naive = median["(a) naive: init, torch.load, load_state_dict, infer"]
    floor = median["(b) floor: copy + one steady inference"]
    mapped = median["steady inference, mapped weights (in-process)"]
    copied = median["steady inference, copied weights (in-process)"]
    after = [f for f in notes.get("cached_fraction_after_fadvise", []) if f is not None]
    lines = [
        f"`affinity bench paging` on {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}: {notes['architecture']} {notes['args']}, "
        f"{notes['bytes'] / 2**30:.2f} GiB of weights, {threads} torch thread(s), median of {trials}",
        "",
        "| path | median ms | every trial, ms |",
        "| --- | ---: | --- |",
    ]
    for label in ROW_ORDER:
        trials_ms = ", ".join(f"{t * 1e3:.0f}" for t in rows.get(label, []))
        lines.append(f"| {label} | {median[label] * 1e3:,.0f} | {trials_ms} |")
    lines += [
        "",
        "| ratio (same run) | measured | goal |",
        "| --- | ---: | ---: |",
        f"| (a) naive / cold start | {naive / cold:.1f}x | >= {GOALS['naive_over_cold']:g}x |",
        f"| cold start / (b) floor | {cold / floor:.2f}x | <= {GOALS['cold_over_floor']:g}x |",
        f"| disk-cold / page-cache cold start | {median['cold start, disk-cold'] / cold:.2f}x | |",
        f"| steady copied / steady mapped | {copied / mapped:.2f}x | ~1x |",
    ]
    if after:
        lines.append(
            f"\nPage cache: {100 * (notes.get('cached_fraction_before') or 0):.0f}% of the weights cached before "
            f"the page-cache rows, {100 * max(after):.0f}% at most after `posix_fadvise(DONTNEED)`."
        )
    return "\n".join(lines)


def main_paging(size: int, architecture: str, trials: int, threads: int, out: Path) -> int:
    try:
        return run_paging(size, architecture, trials, threads, out)
    except RuntimeError as exc:
        print(f"affinity bench paging: {exc}", file=sys.stderr)
        return 1
