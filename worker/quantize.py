"""INT8 weights for a model whose config opts in (``"quantize": "int8"``).

At load, every ``nn.Linear`` becomes torch's dynamically quantized Linear
(fbgemm/x86, or qnnpack on ARM): its weights in INT8 with a scale per output
channel, its activations quantized per batch at run time. A forward pass then
reads a quarter of the bytes, which is what a batch-1 pass over many small
models is bound by (docs/benchmarks.md, issue 18's section), at the cost of
answers within quantization error (~2% of the output's magnitude for the zoo's
MLP). Only the model's owner can accept that, so it is never the default.

Limits: only Linear layers change (convolutions and attention's fused
projections stay FP32); such a model serves from the CPU tier (the quantized
kernels are CPU kernels); the memory budget still charges the file's FP32
bytes, an over-count that keeps eviction conservative. The quantized layers
are private copies, not mapped from the file, so worker processes on one host
do not share them.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def quantize_module(module: nn.Module) -> nn.Module:
    """``module`` with its Linear layers' weights in INT8 (in place: no FP32 copy is made)."""
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; it is what torch 2.4-2.13 ship.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(module, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
