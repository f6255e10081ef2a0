"""``affinity models add|list|remove``: a user's own models in a repository.

    affinity models add scorer --models DIR --weights model.safetensors \\
        --architecture python:acme.nets:build --args '{"features": 6}' \\
        --input query:FP32:-1,6 --output score:FP32:-1,1
    affinity models add digits --models DIR --onnx digits.onnx          # interface read from the graph
    affinity models add digits --models DIR --from-pt2 digits.pt2 --format onnx
    affinity models list --models DIR [--json]
    affinity models remove scorer --models DIR [--version 2]

``add`` writes config.json and manifest.json and refuses what would not load
(``worker.repository_writer``); torch is imported only when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from cli.flags import Flags, names
from protocol.types import TensorSpec

FROM_PT2_HELP = (
    "convert a torch.export archive (.pt2) you trust and made yourself: loading one can run code it carries "
    "(torch.export.load falls back to full unpickling), so this runs on your own machine, at your own risk; "
    "workers never open .pt2 files"
)


def add_parsers(msub: argparse._SubParsersAction) -> None:
    add = msub.add_parser("add", help="add your own model to a repository (checked: it must load)")
    add.add_argument("name", help="model name (letters, digits, _ - .)")
    f = Flags(add, "models")
    f.add("--models", "repository directory (<root>/<name>/<version>/)", type=Path, required=True)
    f.add("--version", "version to add (default: the next one)")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", type=Path, help="a safetensors file, for --architecture")
    source.add_argument("--onnx", type=Path, help="an ONNX file (self-contained, no external data)")
    source.add_argument("--from-pt2", type=Path, help=FROM_PT2_HELP)
    add.add_argument("--format", choices=("onnx", "safetensors"), default="onnx",
                     help="what --from-pt2 converts to (safetensors needs --architecture python:...)")  # fmt: skip
    add.add_argument(
        "--architecture", help="a built-in (mlp, cnn, transformer, logreg) or python:package.module:factory"
    )
    add.add_argument("--args", default="{}", help="the architecture's arguments, as a JSON object")
    add.add_argument("--input", action="append", default=[], metavar="NAME:DATATYPE:DIMS",
                     help="an input, e.g. query:FP32:-1,6 (-1: variable; repeat for each, in order)")  # fmt: skip
    add.add_argument("--output", action="append", default=[], metavar="NAME:DATATYPE:DIMS", help="an output, likewise")
    add.add_argument("--max-batch-size", type=int, help="rows per batch (default: 64 when every first dimension is -1)")
    add.add_argument("--no-deterministic", action="store_true", help="answers vary for one input: never cached")
    add.add_argument("--no-cache", action="store_true", help="keep this model's answers out of the response cache")
    add.add_argument("--cache-ttl", type=float, help="seconds an answer stays cached")
    add.add_argument("--no-warmup", action="store_true", help="workers skip the warm-up forward after loading")
    add.add_argument("--pinned", action="store_true", help="once loaded, never evicted")
    add.add_argument("--quantize", metavar="int8",
                     help="opt in to INT8 weights for Linear layers (answers within quantization error)")  # fmt: skip
    add.add_argument(
        "--allow-code", type=names, default=(), help="packages the check may import (default: the one named)"
    )
    add.set_defaults(run=_run_add)

    listing = msub.add_parser("list", help="a repository's models: formats, sizes, interfaces")
    Flags(listing, "models").add("--models", "repository directory", type=Path, required=True)
    listing.add_argument("--json", action="store_true", help="one JSON object per version")
    listing.set_defaults(run=_run_list)

    remove = msub.add_parser("remove", help="remove a model, or one version of it, from a repository")
    remove.add_argument("name", help="model name")
    Flags(remove, "models").add("--models", "repository directory", type=Path, required=True)
    remove.add_argument("--version", help="only this version (default: every version)")
    remove.set_defaults(run=_run_remove)


def parse_tensor(text: str) -> TensorSpec:
    """``query:FP32:-1,6`` -> TensorSpec('query', 'FP32', (-1, 6))."""
    if text.count(":") < 2:
        raise ValueError(f"--input/--output {text!r}: write NAME:DATATYPE:DIMS, e.g. query:FP32:-1,6")
    name, datatype, dims = text.rsplit(":", 2)
    try:
        shape = tuple(int(d) for d in dims.split(",") if d.strip())
    except ValueError:
        raise ValueError(f"--input/--output {text!r}: dimensions are integers, e.g. name:FP32:-1,6") from None
    if not name or not datatype or not shape:
        raise ValueError(f"--input/--output {text!r}: write NAME:DATATYPE:DIMS, e.g. query:FP32:-1,6")
    return TensorSpec(name, datatype.upper(), shape)


def _interface(args: argparse.Namespace, weights: Path, fmt: str, model_args: dict[str, Any]) -> tuple[Any, Any]:
    inputs = tuple(parse_tensor(t) for t in args.input)
    outputs = tuple(parse_tensor(t) for t in args.output)
    if inputs and outputs:
        return inputs, outputs
    if fmt == "onnx":
        graph_in, graph_out = _onnx_interface(weights)
        return inputs or graph_in, outputs or graph_out
    if args.architecture and not args.architecture.startswith("python:"):
        from worker.architectures import ARCHITECTURES

        arch = ARCHITECTURES.get(args.architecture)
        if arch is not None:
            built_in, built_out = arch.interface(model_args)
            return inputs or built_in, outputs or built_out
    raise ValueError("give the model's interface: --input NAME:DATATYPE:DIMS ... and --output ...")


def _onnx_interface(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    import onnxruntime as ort

    from worker.onnx_pager import graph_interface

    session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    graph_in, graph_out = graph_interface(session)
    return tuple(TensorSpec(*s[:2], tuple(s[2])) for s in graph_in), tuple(
        TensorSpec(*s[:2], tuple(s[2])) for s in graph_out
    )


def _run_add(args: argparse.Namespace) -> int:
    from worker.repository_writer import AddRefused, check_weights_file

    try:
        model_args = json.loads(args.args)
    except json.JSONDecodeError:
        raise ValueError("--args must be a JSON object") from None
    if not isinstance(model_args, dict):
        raise ValueError("--args must be a JSON object")
    with tempfile.TemporaryDirectory(prefix="affinity-add-") as tmp:
        if args.from_pt2 is not None:
            weights, fmt, converted = _convert(args, Path(tmp))
        else:
            weights, fmt, converted = (args.weights, "safetensors", None) if args.weights else (args.onnx, "onnx", None)
            try:
                check_weights_file(weights, fmt)  # before anything reads it, even for the interface
            except AddRefused as exc:
                print(f"affinity models add: refused: {exc}", file=sys.stderr)
                return 1
        if fmt == "safetensors" and not args.architecture:
            raise ValueError("a safetensors model needs --architecture (a built-in or python:package.module:factory)")
        inputs, outputs = converted or _interface(args, weights, fmt, model_args)
        return _add(args, weights, fmt, model_args, inputs, outputs)


def _convert(args: argparse.Namespace, tmp: Path) -> tuple[Path, str, Any]:
    from cli import pt2

    print(f"loading {args.from_pt2.name} (trusted: loading a .pt2 can run code it carries) ...", file=sys.stderr)
    program = pt2.load_trusted(args.from_pt2)
    out_names = [parse_tensor(t).name for t in args.output] or None
    inputs, outputs = pt2.program_interface(program, out_names)
    if args.input:
        inputs = tuple(parse_tensor(t) for t in args.input)
    if args.format == "onnx":
        return pt2.to_onnx(program, tmp / "model.onnx", inputs, outputs), "onnx", (inputs, outputs)
    if not args.architecture:
        raise ValueError("--from-pt2 --format safetensors needs --architecture (the factory that builds the module)")
    return pt2.to_safetensors(program, tmp / "model.safetensors"), "safetensors", (inputs, outputs)


def _add(
    args: argparse.Namespace, weights: Path, fmt: str, model_args: dict[str, Any], inputs: Any, outputs: Any
) -> int:
    from common.units import format_size
    from worker.errors import InvalidModelConfig
    from worker.model_config import ModelConfig
    from worker.repository_writer import AddRefused, add_version

    batch = args.max_batch_size
    if batch is None:
        batch = 64 if all(s.shape and s.shape[0] == -1 for s in (*inputs, *outputs)) else 0
    raw = {
        "format": fmt,
        **({"architecture": args.architecture, "args": model_args} if fmt == "safetensors" else {}),
        "inputs": [s.to_json() for s in inputs],
        "outputs": [s.to_json() for s in outputs],
        "max_batch_size": batch,
        "deterministic": not args.no_deterministic,
        "cache": not args.no_cache,
        **({"cache_ttl": args.cache_ttl} if args.cache_ttl is not None else {}),
        "warmup": not args.no_warmup,
        "pinned": args.pinned,
        **({"quantize": args.quantize} if args.quantize else {}),
    }
    try:
        config = ModelConfig.from_json(raw)
        added = add_version(args.models, args.name, config, weights, args.version, tuple(args.allow_code))
    except (AddRefused, InvalidModelConfig) as exc:
        print(f"affinity models add: refused: {exc}", file=sys.stderr)
        return 1
    what = f"{fmt}, {config.architecture}" if config.architecture else fmt
    print(f"added model '{added.name}' version {added.version} ({what}, "
          f"{format_size(added.manifest.total_bytes)}) in {args.models}")  # fmt: skip
    print(f"  inputs:  {_specs(config.inputs)}\n  outputs: {_specs(config.outputs)}")
    if config.code is not None:
        package = config.code.partition(":")[0].split(".")[0]
        print(f"  workers serve it with --allow-code {package} (and the package importable there)")
    return 0


def _specs(specs: Any) -> str:
    return ", ".join(f"{s.name} {s.datatype} {list(s.shape)}" for s in specs)


def _run_list(args: argparse.Namespace) -> int:
    from common.units import format_size
    from worker.repository import Repository

    if not args.models.is_dir():
        raise ValueError(f"model repository {args.models} is not a directory")
    repository = Repository(args.models)
    repository.scan()
    rows: list[dict[str, Any]] = []
    for name in sorted(repository.models):
        for entry in repository.versions(name):
            config = entry.config
            rows.append({
                "name": entry.name,
                "version": entry.version,
                "format": config.format if config else None,
                "architecture": (config.architecture or None) if config else None,
                "size": entry.size_bytes,
                "inputs": [s.to_json() for s in config.inputs] if config else [],
                "outputs": [s.to_json() for s in config.outputs] if config else [],
                "state": "ok" if config else f"UNAVAILABLE: {entry.problem}",
            })  # fmt: skip
    if args.json:
        for row in rows:
            print(orjson.dumps(row).decode())
        return 0
    print(f"{'MODEL':20s} {'VER':>4s} {'FORMAT':12s} {'ARCHITECTURE':32s} {'SIZE':>10s}  INTERFACE")
    for row in rows:
        io = " ".join(f"{t['name']}:{t['datatype']}{t['shape']}" for t in row["inputs"]) + " -> "
        io += " ".join(f"{t['name']}:{t['datatype']}{t['shape']}" for t in row["outputs"])
        arch = row["architecture"] or ("-" if row["format"] else "")
        fmt = row["format"] or "?"
        print(f"{row['name']:20s} {row['version']:>4s} {fmt:12s} {arch:32s} {format_size(row['size']):>10s}  "
              f"{io if row['state'] == 'ok' else row['state']}")  # fmt: skip
    return 0


def _run_remove(args: argparse.Namespace) -> int:
    from worker.repository_writer import AddRefused, remove_versions

    try:
        removed = remove_versions(args.models, args.name, args.version)
    except AddRefused as exc:
        print(f"affinity models remove: {exc}", file=sys.stderr)
        return 1
    print(f"removed model '{args.name}' version(s) {', '.join(removed)} from {args.models}")
    return 0
