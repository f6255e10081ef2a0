"""Real model architectures, built from a config's ``args``.

Each architecture says how to build its ``nn.Module`` (on whatever device is
current: the loader uses the meta device, then attaches memory-mapped weights)
and what tensors it takes and returns, so the demo zoo and the loader agree.
A module's ``forward`` takes the inputs in declared order and returns one
tensor per declared output (a tensor when there is one).

    mlp          FP32 [-1, in_features]       -> logits [-1, out_features]
    logreg       INT64 [-1, active] ids       -> probabilities [-1, classes]   (sparse: {vocab, active, classes})
                 FP32 [-1, features]          -> probabilities [-1, classes]   (dense: {features, classes})
    cnn          FP32 [-1, channels, H, W]    -> logits [-1, classes]
    transformer  INT64 [-1, seq_len] ids      -> logits [-1, classes]
    identity     <datatype> [-1, width]       -> the same tensor   (no weights; any V2 datatype, BYTES too)

Models grow by width, depth or vocabulary, never by input width, so a large
model still takes a small request. ``example`` is each architecture's tiny
instance, used to pay the library's one-time initialisation at start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from protocol.errors import BadRequest
from protocol.types import TensorSpec

Args = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Architecture:
    name: str
    build: Callable[[Args], nn.Module]
    interface: Callable[[Args], tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]]
    # Optional check of input values a shape check cannot catch (token ids in range).
    check_inputs: Callable[[Args, list[Any]], None] | None = None
    example: Args | None = None  # a tiny instance's arguments


def _mlp(args: Args) -> nn.Module:
    sizes = [int(args["in_features"]), *[int(h) for h in args["hidden"]], int(args["out_features"])]
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _mlp_io(args: Args) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    return (
        (TensorSpec("input", "FP32", (-1, int(args["in_features"]))),),
        (TensorSpec("logits", "FP32", (-1, int(args["out_features"]))),),
    )


class LogisticRegression(nn.Module):
    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x), dim=-1)


class SparseLogisticRegression(nn.Module):
    """Logistic regression over a bag of active feature ids (hashed features, as
    click-through models use): each row holds ``active`` ids from a ``vocab``, and
    the logits are the sum of their weight rows plus a bias. It grows by vocabulary."""

    def __init__(self, vocab: int, classes: int) -> None:
        super().__init__()
        self.weight = nn.EmbeddingBag(vocab, classes, mode="sum")
        self.bias = nn.Parameter(torch.zeros(classes))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.weight(ids) + self.bias, dim=-1)


def _sparse(args: Args) -> bool:
    return "vocab" in args


def _logreg(args: Args) -> nn.Module:
    if _sparse(args):
        return SparseLogisticRegression(int(args["vocab"]), int(args["classes"]))
    return LogisticRegression(int(args["features"]), int(args["classes"]))


def _logreg_io(args: Args) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    if _sparse(args):
        given = TensorSpec("feature_ids", "INT64", (-1, int(args["active"])))
    else:
        given = TensorSpec("input", "FP32", (-1, int(args["features"])))
    return (given,), (TensorSpec("probabilities", "FP32", (-1, int(args["classes"]))),)


def _logreg_check(args: Args, inputs: list[Any]) -> None:
    if _sparse(args):
        _check_ids("feature_ids", "feature", int(args["vocab"]), inputs[0])


def _cnn(args: Args) -> nn.Module:
    channels, width, classes = int(args["channels"]), int(args["width"]), int(args["classes"])
    size = int(args["size"])
    blocks: list[nn.Module] = []
    c_in = channels
    for mult in (1, 2, 4):
        c_out = width * mult
        blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c_out
    side = size // 8
    return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(c_in * side * side, classes))


def _cnn_io(args: Args) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    size = int(args["size"])
    return (
        (TensorSpec("image", "FP32", (-1, int(args["channels"]), size, size)),),
        (TensorSpec("logits", "FP32", (-1, int(args["classes"]))),),
    )


class TextClassifier(nn.Module):
    """Token embedding + learned positions + transformer encoder + mean pool + linear head."""

    def __init__(self, vocab: int, d_model: int, heads: int, layers: int, seq_len: int, classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Parameter(torch.zeros(seq_len, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=4 * d_model, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(self.embed(ids) + self.position[: ids.shape[1]])
        return self.head(hidden.mean(dim=1))


class Identity(nn.Module):
    """Answers its input unchanged: the protocol's test model for every datatype.
    It runs on the numpy arrays themselves (``numpy_forward``), since torch has
    no BYTES tensors and only partial unsigned ones."""

    numpy_forward = True

    def forward(self, x: Any) -> Any:
        return x


def _identity_io(args: Args) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    datatype, width = str(args["datatype"]), int(args["width"])
    return (TensorSpec("input", datatype, (-1, width)),), (TensorSpec("output", datatype, (-1, width)),)


def _transformer(args: Args) -> nn.Module:
    return TextClassifier(
        int(args["vocab"]), int(args["d_model"]), int(args["heads"]), int(args["layers"]),
        int(args["seq_len"]), int(args["classes"]),
    )  # fmt: skip


def _transformer_io(args: Args) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    return (
        (TensorSpec("input_ids", "INT64", (-1, int(args["seq_len"]))),),
        (TensorSpec("logits", "FP32", (-1, int(args["classes"]))),),
    )


def _transformer_check(args: Args, inputs: list[Any]) -> None:
    _check_ids("input_ids", "token", int(args["vocab"]), inputs[0])


def _check_ids(name: str, kind: str, vocab: int, ids: Any) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise BadRequest(f"input '{name}': {kind} ids must be in [0, {vocab - 1}]")


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("mlp", _mlp, _mlp_io, None, {"in_features": 8, "hidden": [8], "out_features": 2}),
        Architecture("logreg", _logreg, _logreg_io, _logreg_check, {"vocab": 16, "active": 4, "classes": 2}),
        Architecture("cnn", _cnn, _cnn_io, None, {"channels": 3, "size": 8, "width": 2, "classes": 2}),
        Architecture("identity", lambda args: Identity(), _identity_io, None, {"datatype": "FP32", "width": 4}),
        Architecture(
            "transformer",
            _transformer,
            _transformer_io,
            _transformer_check,
            {"vocab": 16, "d_model": 8, "heads": 2, "layers": 1, "seq_len": 4, "classes": 2},
        ),
    )
}
