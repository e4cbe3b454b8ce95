"""The optimizer a recipe asks for: SGD (with Muon for the filters when asked) over parameter groups."""

from __future__ import annotations

import torch

from .finetune import parameter_groups
from .muon import SGDMuon
from .recipe import Recipe


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.SGD:
    """SGD over the recipe's parameter groups: head and backbone (fine-tuning), each split into biases
    and the rest when biases train faster. With decoupled weight decay, every group shrinks its weights
    by `weight_decay` per step at the peak rate, whatever its own rate (the group's decay is divided
    by its rate, which SGD multiplies back). With `muon_lr`, the convolution filters take Muon's step.
    (SGDMuon is plain torch.optim.SGD when no group is a Muon group.)"""
    biases = {id(p) for name, p in model.named_parameters() if name.endswith("bias")}
    groups = []
    for group in parameter_groups(model, recipe.lr, recipe.backbone_lr, recipe.freeze_backbone):
        if recipe.bias_lr_scale == 1.0:
            groups.append(group)
            continue
        for wanted, scale in ((False, 1.0), (True, recipe.bias_lr_scale)):
            params = [p for p in group["params"] if (id(p) in biases) == wanted and p.requires_grad]
            if params:
                groups.append({"params": params, "lr_scale": group["lr_scale"] * scale})
    if recipe.whiten_bias_epochs or recipe.whiten_bias_lr_scale:  # a speedrun model (validated)
        groups = _whitening_bias_group(groups, recipe, model.whitening_bias())
    for group in groups:  # after every rate is set, so each group's decoupled decay follows from its own
        group["weight_decay"] = (
            recipe.weight_decay / (recipe.lr * group["lr_scale"])
            if recipe.decoupled_weight_decay
            else recipe.weight_decay
        )
    if recipe.muon_lr:  # the convolution filters take Muon steps (cnnlab.muon): their own rate, no decay
        groups = _own_group(
            groups,
            lambda p: p.ndim == 4,
            lr_scale=recipe.muon_lr / recipe.lr,
            weight_decay=0.0,
            momentum=0.0,
            muon_momentum=recipe.muon_momentum,
        )
    for group in groups:
        group["lr"] = recipe.lr * group["lr_scale"]
    return SGDMuon(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov, foreach=True)


def _whitening_bias_group(groups: list[dict], recipe: Recipe, bias: torch.nn.Parameter) -> list[dict]:
    """The whitening layer's bias in a group of its own: at whiten_bias_lr_scale times lr when that is set
    (airbench trains it at the base rate, where the batch-norm shifts train 64x faster); and only for the
    first whiten_bias_epochs when those are set."""
    settings = {}
    if recipe.whiten_bias_lr_scale:
        settings["lr_scale"] = recipe.whiten_bias_lr_scale
    if recipe.whiten_bias_epochs:
        settings["trains_until_epoch"] = recipe.whiten_bias_epochs
    return _own_group(groups, lambda p: p is bias, **settings)


def _own_group(groups: list[dict], chosen, **settings) -> list[dict]:
    """Each group split in two: the parameters `chosen` picks, with `settings` on top of the group's own,
    and the rest; empty halves dropped."""
    split = []
    for group in groups:
        rest = [p for p in group["params"] if not chosen(p)]
        picked = [p for p in group["params"] if chosen(p)]
        split += [g for g in ({**group, "params": rest}, {**group, "params": picked, **settings}) if g["params"]]
    return split
