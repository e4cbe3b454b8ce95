"""Models by name. Adding an architecture is one entry here; the training loop never changes."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import UsageError
from .smallcnn import SmallCNN, conv_block

# name -> (builder(num_classes) -> nn.Module, one-line description)
MODELS: dict[str, tuple[Callable[[int], nn.Module], str]] = {
    "smallcnn": (lambda n: SmallCNN(n), "the chapter's SmallCNN: 3 stages of conv-BN-ReLU, 288,746 parameters"),
    "smallcnn-nobn": (lambda n: SmallCNN(n, batch_norm=False), "SmallCNN without batch norm (the Exercise 19.5.2 ablation)"),
}


def build_model(name: str, num_classes: int) -> nn.Module:
    if name not in MODELS:
        raise UsageError(f"unknown model '{name}': choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name][0](num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "SmallCNN", "build_model", "conv_block", "count_parameters"]
