"""The demo zoo grows models by width, depth or vocabulary, never by input width,
so a 1 GiB model still takes a small request. Checked on the meta device: no
weights are allocated or written."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from protocol.errors import BadRequest
from worker.architectures import ARCHITECTURES
from worker.zoo import ORDER, args_for

GIB = 1 << 30


@pytest.mark.parametrize("architecture", ORDER)
@pytest.mark.parametrize("size", [64 << 10, 16 << 20, GIB, 4 * GIB])
def test_sizes_are_reached_with_a_fixed_input_width(architecture: str, size: int) -> None:
    args = args_for(architecture, size)
    arch = ARCHITECTURES[architecture]
    with torch.device("meta"):
        module = arch.build(args)
    weight_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    if size >= 1 << 20:  # below, each architecture has a floor (the transformer's 1000-token vocabulary)
        assert 0.7 * size < weight_bytes < 1.3 * size
    inputs, _ = arch.interface(args)
    per_row = sum(math.prod(d for d in spec.shape if d != -1) for spec in inputs)
    assert per_row <= 3 * 32 * 32  # the CNN's image is the widest input, at every size


def test_sparse_logreg_checks_its_feature_ids() -> None:
    arch = ARCHITECTURES["logreg"]
    args = args_for("logreg", 1 << 20)
    assert arch.check_inputs is not None
    arch.check_inputs(args, [np.array([[0, args["vocab"] - 1]])])
    with pytest.raises(BadRequest, match="feature ids"):
        arch.check_inputs(args, [np.array([[args["vocab"]]])])
    module = arch.build(args)
    probabilities = module(torch.randint(0, args["vocab"], (3, args["active"])))
    assert probabilities.shape == (3, 10)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(3))


def test_dense_logreg_configs_still_load() -> None:
    arch = ARCHITECTURES["logreg"]
    args = {"features": 20, "classes": 3}
    (spec,), _ = arch.interface(args)
    assert (spec.name, spec.datatype, spec.shape) == ("input", "FP32", (-1, 20))
    assert arch.build(args)(torch.zeros(2, 20)).shape == (2, 3)
