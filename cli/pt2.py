"""``affinity models add --from-pt2``: convert a trusted torch.export archive, on the operator's machine.

A ``.pt2`` is not a format any worker opens: in torch 2.13 ``torch.export.load``
retries a failed restricted load with the unrestricted unpickler, so a hostile
archive runs code. An operator who trusts an archive (they exported it
themselves) may convert it here, in this process, at their own risk, into a
format the workers serve:

    onnx         the exported program through ``torch.onnx.export`` (needs the onnx extra)
    safetensors  the program's weights, for the operator's own factory
                 (``python:package.module:factory``) to attach

The interface (names, datatypes, shapes with -1 for dynamic dimensions) is read
from the program unless given. Nothing in ``worker/`` imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protocol.types import TensorSpec

TORCH_DATATYPES = {
    "float32": "FP32", "float64": "FP64", "float16": "FP16", "int64": "INT64", "int32": "INT32",
    "int16": "INT16", "int8": "INT8", "uint8": "UINT8", "bool": "BOOL",
}  # fmt: skip


def load_trusted(path: Path) -> Any:
    """The exported program (this may run code the archive carries: trusted archives only)."""
    import torch

    return torch.export.load(path)


def program_interface(
    program: Any, output_names: list[str] | None = None
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs named as the exported forward names them; outputs ``output`` (``output_0``, ...) unless named."""
    user_inputs = set(program.graph_signature.user_inputs)
    inputs = tuple(
        _spec(node.name, node.meta["val"])
        for node in program.graph.nodes
        if node.op == "placeholder" and node.name in user_inputs
    )
    [output_node] = [node for node in program.graph.nodes if node.op == "output"]
    values = [arg.meta["val"] for arg in output_node.args[0]]
    names = output_names or (["output"] if len(values) == 1 else [f"output_{i}" for i in range(len(values))])
    if len(names) != len(values):
        raise ValueError(f"the program returns {len(values)} outputs, {len(names)} names were given")
    return inputs, tuple(_spec(name, value) for name, value in zip(names, values, strict=True))


def _spec(name: str, fake: Any) -> TensorSpec:
    datatype = TORCH_DATATYPES.get(str(fake.dtype).removeprefix("torch."))
    if datatype is None:
        raise ValueError(f"'{name}' has dtype {fake.dtype}, which the V2 protocol has no name for")
    return TensorSpec(name, datatype, tuple(d if isinstance(d, int) else -1 for d in fake.shape))


def to_onnx(program: Any, out: Path, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> Path:
    """Write the program as a self-contained ONNX file."""
    import torch

    torch.onnx.export(
        program,
        (),
        str(out),
        input_names=[s.name for s in inputs],
        output_names=[s.name for s in outputs],
        external_data=False,
        verbose=False,
    )
    return out


def to_safetensors(program: Any, out: Path) -> Path:
    """Write the program's parameters and persistent buffers as safetensors (each tensor its own copy)."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().contiguous().clone() for name, tensor in program.state_dict.items()}
    save_file(state, str(out))
    return out
