"""The steps of one inference: decode, check against the model's interface, encode
(the forward itself is ``worker.paging.run_on``, on the host or a device).

Everything here is CPU work and runs in the worker's inference thread pool
(the batcher calls it), never on the event loop. Checks happen before any side
effect: a request that does not match the model's metadata is a 400 and never
reaches torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from torch import nn

from protocol.errors import BadRequest
from protocol.types import InferRequest, InferResponse, Tensor, TensorSpec
from worker.architectures import ARCHITECTURES
from worker.codecs import Codec
from worker.model_config import ModelConfig


class ArrayModel(Protocol):
    """A model that runs on arrays itself (an ONNX session): inputs in declared order in,
    outputs in declared order out."""

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]: ...


@dataclass(slots=True)
class LoadedModel:
    name: str
    version: str
    config: ModelConfig
    module: nn.Module | ArrayModel


def check_request(request: InferRequest, config: ModelConfig) -> list[np.ndarray]:
    """The request's input arrays in the model's declared order, or BadRequest."""
    given = {t.name: t for t in request.inputs}
    arrays = []
    batch: int | None = None
    for spec in config.inputs:
        tensor = given.pop(spec.name, None)
        if tensor is None:
            raise BadRequest(f"missing input '{spec.name}'")
        _check_tensor(tensor, spec)
        if config.max_batch_size > 0:
            n = tensor.shape[0]
            if n < 1 or n > config.max_batch_size:
                raise BadRequest(f"input '{spec.name}': batch size {n} is outside 1..{config.max_batch_size}")
            if batch is not None and n != batch:
                raise BadRequest("inputs disagree on the batch size")
            batch = n
        arrays.append(tensor.data)
    if given:
        raise BadRequest(f"unexpected input '{next(iter(given))}'")
    if request.outputs is not None:
        known = {spec.name for spec in config.outputs}
        for wanted in request.outputs:
            if wanted.name not in known:
                raise BadRequest(f"unknown output '{wanted.name}'")
    arch = ARCHITECTURES.get(config.architecture)
    if arch is not None and arch.check_inputs is not None:
        arch.check_inputs(config.args, arrays)
    return arrays


def _check_tensor(tensor: Tensor, spec: TensorSpec) -> None:
    if tensor.datatype != spec.datatype:
        raise BadRequest(f"input '{spec.name}': datatype {tensor.datatype} given, model expects {spec.datatype}")
    if len(tensor.shape) != len(spec.shape) or any(
        want != -1 and got != want for got, want in zip(tensor.shape, spec.shape, strict=True)
    ):
        raise BadRequest(f"input '{spec.name}': shape {list(tensor.shape)} given, model expects {list(spec.shape)}")


def answer_for(model: LoadedModel, request: InferRequest, results: list[np.ndarray]) -> InferResponse:
    """The V2 answer for one request: the outputs it asked for (all by default)."""
    wanted = None if request.outputs is None else {o.name for o in request.outputs}
    outputs = [
        Tensor(spec.name, spec.datatype, tuple(arr.shape), arr)
        for spec, arr in zip(model.config.outputs, results, strict=True)
        if wanted is None or spec.name in wanted
    ]
    return InferResponse(model_name=model.name, model_version=model.version, id=request.id, outputs=outputs)


def decode_and_check(payload: Any, codec: Codec, config: ModelConfig, max_elements: int) -> InferRequest:
    request = codec.decode(payload, max_elements)
    check_request(request, config)
    return request
