"""Models by name. Adding an architecture is one entry in MODELS; the training loop never changes.

The registry itself imports no torch (so that a command line can be checked in a fraction of a
second): each entry builds its network on demand. A model may have options of its own (the speedrun
network's `whiten` and `identity_init`): a recipe gives them in `model_options`, and they exist only
for the models that declare them.

Every model also answers `stage_sequence()`: the nn.Sequential of its stages, which `inspect` hooks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Option:
    """A model's own switch: its default and what it does. `before`: what the network did in runs saved
    before the switch existed (None: it changes nothing a saved run's weights depend on)."""

    default: bool
    help: str
    before: bool | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    family: str  # smallcnn, resnet, speedrun or torchvision
    build: Callable[..., nn.Module]  # (num_classes, **options) -> the network
    options: dict[str, Option] = field(default_factory=dict)

    def resolve_options(self, given: dict) -> dict:
        """Every option of this model: the given values over the defaults. An option the model does not
        have is a UsageError naming the models that do."""
        for key, value in given.items():
            if key not in self.options:
                having = sorted(n for n, s in MODELS.items() if key in s.options) + (
                    ["speedrun-W1-W2-W3"] if key in SPEEDRUN_OPTIONS else []
                )
                raise UsageError(
                    f"model {self.name} has no option {key} (it applies to {', '.join(having) or 'no model'})",
                    parameters=(key,),
                )
            if not isinstance(value, bool):
                raise UsageError(f"model option {key} should be true or false, got {value!r}", parameters=(key,))
        return {key: given.get(key, option.default) for key, option in self.options.items()}


SPEEDRUN_OPTIONS = {
    "whiten": Option(True, "speedrun models: a frozen whitening first layer, set from the training patches"),
    "identity_init": Option(True, "speedrun models: 3x3 convolutions start as the identity"),
    # airbench94 has it, and without it each +/- pair of whitening filters is one linear feature twice.
    "whiten_gelu": Option(True, "speedrun models: a GELU after the whitening layer, as airbench94", before=False),
}


def _smallcnn(batch_norm: bool):
    def build(num_classes: int, **_options):
        from .smallcnn import SmallCNN

        return SmallCNN(num_classes, batch_norm=batch_norm)

    return build


def _resnet18(num_classes: int, **_options):
    from .resnet import ResNet18

    return ResNet18(num_classes)


def _speedrun(widths: tuple[int, int, int]):
    def build(num_classes: int, **options):
        from .speedrun import SpeedrunNet

        return SpeedrunNet(num_classes, widths, **options)

    return build


def _torchvision(name: str):
    def build(num_classes: int, **_options):
        return torchvision_model(name, num_classes)

    return build


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            "smallcnn",
            "the chapter's SmallCNN: 3 stages of conv-BN-ReLU, 288,746 parameters",
            "smallcnn",
            _smallcnn(True),
        ),
        ModelSpec(
            "smallcnn-nobn", "SmallCNN without batch norm (the Exercise 19.5.2 ablation)", "smallcnn", _smallcnn(False)
        ),
        ModelSpec(
            "resnet18", "ResNet-18 for 32x32 inputs: 3x3 stem, no max-pool, 11,173,962 parameters", "resnet", _resnet18
        ),
        ModelSpec(
            "speedrun",
            "the airbench-style speedrun net: whitening, 3 stages 64/256/256, GELU, 1,972,792 parameters",
            "speedrun",
            _speedrun((64, 256, 256)),
            SPEEDRUN_OPTIONS,
        ),
        ModelSpec(
            "speedrun-small",
            "the speedrun net at half width (32/128/128) for CPUs, 498,104 parameters",
            "speedrun",
            _speedrun((32, 128, 128)),
            SPEEDRUN_OPTIONS,
        ),
    )
}
TORCHVISION_PREFIX = "tv:"
# The speedrun net at any stage widths, for trading width against epochs: speedrun-48-192-192.
SPEEDRUN_WIDTHS = re.compile(r"speedrun-([1-9][0-9]{0,3})-([1-9][0-9]{0,3})-([1-9][0-9]{0,3})")
MODEL_CHOICES = f"{', '.join(sorted(MODELS))}, speedrun-W1-W2-W3 (stage widths), or tv:NAME for a torchvision model"


def model_spec(name: str) -> ModelSpec:
    """The registry entry of a model name, patterns included (speedrun-W1-W2-W3, tv:NAME)."""
    if name in MODELS:
        return MODELS[name]
    if widths := SPEEDRUN_WIDTHS.fullmatch(name):
        w = tuple(int(x) for x in widths.groups())
        return ModelSpec(
            name, f"the speedrun net with stage widths {w[0]}/{w[1]}/{w[2]}", "speedrun", _speedrun(w), SPEEDRUN_OPTIONS
        )
    if name.startswith(TORCHVISION_PREFIX) and len(name) > len(TORCHVISION_PREFIX):
        tv = name[len(TORCHVISION_PREFIX) :]
        return ModelSpec(name, f"torchvision's {tv}", "torchvision", _torchvision(tv))
    raise UsageError(f"unknown model {name!r}: choose one of {MODEL_CHOICES}", parameters=("model",))


def is_known_model(name: str) -> bool:
    try:
        model_spec(name)
        return True
    except UsageError:
        return False


def build_model(name: str, num_classes: int, **options) -> nn.Module:
    """The network `name` for `num_classes` classes, with its options (defaults for those not given)."""
    spec = model_spec(name)
    return spec.build(num_classes, **spec.resolve_options(options))


def saved_run_options(name: str, saved) -> dict:
    """The options a saved run's network was built with, from its recipe's `model_options` (`saved`); build_model
    gives the rest their defaults. A switch the run predates takes its `before` value, so an older checkpoint
    computes as it did when it was trained."""
    saved = saved if isinstance(saved, dict) else {}
    chosen = {}
    for key, option in model_spec(name).options.items():
        if isinstance(saved.get(key), bool):
            chosen[key] = saved[key]
        elif key not in saved and option.before is not None:
            chosen[key] = option.before
    return chosen


def torchvision_model(name: str, num_classes: int) -> nn.Module:
    """torchvision.models by name, randomly initialised, with the head sized for `num_classes`
    (optional: torchvision must import; load pretrained weights with --weights)."""
    try:
        import torchvision
    except Exception as e:  # ImportError, or a torchvision built for another torch
        raise UsageError(
            f"tv:{name} needs torchvision, which cannot be imported here ({type(e).__name__}); "
            "install a torchvision that matches your torch, or use a cnnlab model"
        ) from None
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except ValueError:
        raise UsageError(f"torchvision has no model '{name}'; see torchvision.models.list_models()") from None


def head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier: the last Linear layer, by name (what fine-tuning replaces when classes differ)."""
    from torch import nn

    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UsageError(f"{type(model).__name__} has no Linear head to fine-tune")
    return linears[-1]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "MODELS",
    "MODEL_CHOICES",
    "ModelSpec",
    "Option",
    "build_model",
    "count_parameters",
    "head",
    "is_known_model",
    "model_spec",
]
