"""ONNX models (``model.onnx``, protobuf: no pickle) through onnxruntime.

onnxruntime is an optional extra (``pip install 'affinity-serve[onnx]'``); a
worker without it serves every other format and reports ONNX versions as
UNAVAILABLE with the install hint. The graph's own inputs and outputs are
compared with config.json's before any forward (names, datatypes, ranks, fixed
dimensions), so a mismatch is named precisely; the synthetic forward of
``worker.interface`` then checks what comes back.

Memory: onnxruntime copies the initializers out of the file into buffers the
session owns, so an ONNX model does not share pages with other processes the
way a memory-mapped safetensors file does. The session is made from the file's
path (handed bytes, onnxruntime keeps a copy of them too) with the CPU
allocator's arena off, so activations are not kept between runs. The memory
tier is charged what the session holds, from the file's size before loading
(``held_bytes``: measured here, a session held 1.08-1.19x its file, prepacked
weights included, plus about 100 KiB of its own). External data files beside
``model.onnx`` count with it (onnxruntime refuses locations outside the
model's directory).
Threads: each session runs on one thread (``intra_op_num_threads`` 1, no
spinning), as torch does here: the worker's inference pool, sized to its share
of the cores, is what runs models in parallel. ONNX models serve from the CPU
tier.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np

from protocol.errors import ModelUnavailable
from worker.interface import InterfaceMismatch, describe_inputs
from worker.model_config import ModelConfig

# onnxruntime's type strings -> V2 datatypes.
ORT_TYPES = {
    "tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16", "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64",
    "tensor(string)": "BYTES",
}  # fmt: skip
INSTALL_HINT = "ONNX models need onnxruntime: pip install 'affinity-serve[onnx]'"
HELD_PER_FILE_BYTE = 1.25  # the session's bytes per byte of its files (measured up to 1.19)
SESSION_BYTES = 256 << 10  # the session's own state beside its weights (measured ~100 KiB)


def held_bytes(file_bytes: int) -> int:
    """What a session over ``file_bytes`` of ONNX files holds in memory, charged before loading."""
    return math.ceil(file_bytes * HELD_PER_FILE_BYTE) + SESSION_BYTES


def available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


class OnnxModel:
    """A session that runs arrays in config.json's input order and returns its outputs' order."""

    def __init__(self, session: Any, inputs: list[str], outputs: list[str]) -> None:
        self.session = session
        self._inputs = inputs
        self._outputs = outputs

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(self._outputs, dict(zip(self._inputs, arrays, strict=True))))


def load_onnx(where: str, config: ModelConfig, path: Path, threads: int = 1) -> OnnxModel:
    """A session over the file, its graph checked against config.json (blocking)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelUnavailable(f"{where}: {INSTALL_HINT}") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3  # errors only: the load's outcome is reported by the manager
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        # From the path, not from bytes: handed bytes, onnxruntime keeps a copy of them
        # beside its initializers (measured: 2.15x the file held, against 1.15x).
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind types (InvalidProtobuf, InvalidGraph, Fail...)
        raise ModelUnavailable(f"{where}: model.onnx could not be loaded by onnxruntime ({_reason(exc)})") from None
    check_graph(where, config, session)
    return OnnxModel(session, [s.name for s in config.inputs], [s.name for s in config.outputs])


def graph_interface(session: Any) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    """The graph's (name, V2 datatype, shape with -1 for symbolic dimensions) inputs and outputs."""

    def spec(node: Any) -> tuple[str, str, list[int]]:
        dims = [d if isinstance(d, int) and d > 0 else -1 for d in (node.shape or [])]
        return node.name, ORT_TYPES.get(node.type, node.type), dims

    return [spec(n) for n in session.get_inputs()], [spec(n) for n in session.get_outputs()]


def check_graph(where: str, config: ModelConfig, session: Any) -> None:
    """InterfaceMismatch naming the first way the graph differs from config.json."""
    graph_inputs, graph_outputs = graph_interface(session)
    by_name = {name: (datatype, dims) for name, datatype, dims in graph_inputs}
    takes = ", ".join(f"'{n}' {t} {d}" for n, t, d in graph_inputs)
    for spec in config.inputs:
        found = by_name.pop(spec.name, None)
        if found is None:
            raise InterfaceMismatch(
                f"{where}: input '{spec.name}' is not an input of the ONNX graph (it takes {takes})"
            )
        datatype, dims = found
        if datatype != spec.datatype:
            raise InterfaceMismatch(
                f"{where}: input '{spec.name}' is declared {spec.datatype}, the graph takes {datatype}"
            )
        if not _dims_agree(list(spec.shape), dims):
            raise InterfaceMismatch(
                f"{where}: input '{spec.name}' is declared {list(spec.shape)}, the graph takes {dims}"
            )
    if by_name:
        raise InterfaceMismatch(
            f"{where}: the ONNX graph also takes input '{next(iter(by_name))}', which config.json does not declare "
            f"(declared: {describe_inputs(config.inputs)})"
        )
    returns = {name for name, _, _ in graph_outputs}
    for spec in config.outputs:
        if spec.name not in returns:
            names = ", ".join(f"'{n}'" for n, _, _ in graph_outputs)
            raise InterfaceMismatch(f"{where}: output '{spec.name}' is not an output of the ONNX graph ({names})")


def _dims_agree(declared: list[int], graph: list[int]) -> bool:
    """Same rank; a dimension the graph fixes is declared with that size (-1 only where the graph varies)."""
    if len(declared) != len(graph):
        return False
    return all(g == -1 or d == g for d, g in zip(declared, graph, strict=True))


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
