"""Models by name. Adding an architecture is one entry here; the training loop never changes."""

from __future__ import annotations

import re
from typing import Callable

from torch import nn

from ..errors import UsageError
from .resnet import ResNet18
from .smallcnn import SmallCNN, conv_block
from .speedrun import SpeedrunNet

# name -> (builder(num_classes, **options) -> nn.Module, one-line description). Options are the
# recipe's model switches (whiten, identity_init); models without such switches ignore them.
MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "smallcnn": (lambda n, **_: SmallCNN(n), "the chapter's SmallCNN: 3 stages of conv-BN-ReLU, 288,746 parameters"),
    "smallcnn-nobn": (lambda n, **_: SmallCNN(n, batch_norm=False),
                      "SmallCNN without batch norm (the Exercise 19.5.2 ablation)"),
    "resnet18": (lambda n, **_: ResNet18(n), "ResNet-18 for 32x32 inputs: 3x3 stem, no max-pool, 11,173,962 parameters"),
    "speedrun": (lambda n, **o: SpeedrunNet(n, (64, 256, 256), **o),
                 "the airbench-style speedrun net: whitening, 3 stages 64/256/256, GELU, 1,972,792 parameters"),
    "speedrun-small": (lambda n, **o: SpeedrunNet(n, (32, 128, 128), **o),
                       "the speedrun net at half width (32/128/128) for CPUs, 498,104 parameters"),
}
TORCHVISION_PREFIX = "tv:"
# The speedrun net at any stage widths, for trading width against epochs: speedrun-48-192-192.
SPEEDRUN_WIDTHS = re.compile(r"speedrun-([1-9][0-9]*)-([1-9][0-9]*)-([1-9][0-9]*)")
MODEL_CHOICES = f"{', '.join(sorted(MODELS))}, speedrun-W1-W2-W3 (stage widths), or tv:NAME for a torchvision model"


def is_known_model(name: str) -> bool:
    return name in MODELS or name.startswith(TORCHVISION_PREFIX) or SPEEDRUN_WIDTHS.fullmatch(name) is not None


def build_model(name: str, num_classes: int, **options) -> nn.Module:
    if name.startswith(TORCHVISION_PREFIX):
        return torchvision_model(name[len(TORCHVISION_PREFIX):], num_classes)
    if widths := SPEEDRUN_WIDTHS.fullmatch(name):
        return SpeedrunNet(num_classes, tuple(int(w) for w in widths.groups()), **options)
    if name not in MODELS:
        raise UsageError(f"unknown model '{name}': choose one of {MODEL_CHOICES}")
    return MODELS[name][0](num_classes, **options)


def torchvision_model(name: str, num_classes: int) -> nn.Module:
    """torchvision.models by name, randomly initialised, with the head sized for `num_classes`
    (optional: torchvision must import; load pretrained weights with --weights)."""
    try:
        import torchvision
    except Exception as e:  # ImportError, or a torchvision built for another torch
        raise UsageError(f"tv:{name} needs torchvision, which cannot be imported here ({type(e).__name__}); "
                         "install a torchvision that matches your torch, or use a cnnlab model") from None
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except ValueError:
        raise UsageError(f"torchvision has no model '{name}'; see torchvision.models.list_models()") from None


def head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier: the last Linear layer, by name (what fine-tuning replaces when classes differ)."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UsageError(f"{type(model).__name__} has no Linear head to fine-tune")
    return linears[-1]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "MODEL_CHOICES", "is_known_model", "ResNet18", "SmallCNN", "SpeedrunNet", "build_model", "conv_block", "count_parameters", "head"]
