"""A model no built-in architecture describes: two inputs, two named outputs.

``Scorer`` takes dense query features and a bag of item ids and returns a dict
of named outputs (``score`` and ``embedding``); a buffer it computes itself and
never saves (``scale``, non-persistent) exercises the loader's fill-in path.
"""

from __future__ import annotations

import torch
from torch import nn


class Scorer(nn.Module):
    def __init__(self, features: int, vocab: int, dim: int) -> None:
        super().__init__()
        self.query = nn.Sequential(nn.Linear(features, dim), nn.Tanh(), nn.Linear(dim, dim))
        self.items = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.head = nn.Linear(dim, 1)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, dim), persistent=False)

    def forward(self, query: torch.Tensor, item_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = self.query(query) * self.items(item_ids) * self.scale
        return {"score": torch.sigmoid(self.head(embedding)), "embedding": embedding}


def build(features: int, vocab: int, dim: int = 16) -> Scorer:
    return Scorer(features, vocab, dim)


def interface(features: int, vocab: int, dim: int = 16, active: int = 4) -> dict[str, list[dict[str, object]]]:
    """The config.json interface of ``build(features, vocab, dim)`` with ``active`` ids a row."""
    return {
        "inputs": [
            {"name": "query", "datatype": "FP32", "shape": [-1, features]},
            {"name": "item_ids", "datatype": "INT64", "shape": [-1, active]},
        ],
        "outputs": [
            {"name": "score", "datatype": "FP32", "shape": [-1, 1]},
            {"name": "embedding", "datatype": "FP32", "shape": [-1, dim]},
        ],
    }


def not_a_module(**args: object) -> int:
    return 42


def build_mlp(features: int, hidden: int, classes: int) -> nn.Module:
    """A plain MLP, for the torch.export (.pt2) conversions."""
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


class Unbatched(nn.Module):
    """Ignores its batch: always answers one row (a model that cannot batch)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x[:1])


def build_unbatched(features: int) -> nn.Module:
    return Unbatched(features)
