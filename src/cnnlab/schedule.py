"""The learning rate at every step: the recipe's schedule, warm-up and per-group scales."""

from __future__ import annotations

import math

import torch

from .recipe import Recipe


def learning_rate(recipe: Recipe, epoch: int, step: int = 0, steps: int = 1) -> float:
    """The rate at 0-based `step` of `steps` in 0-based `epoch`.

    cosine: CosineAnnealingLR(T_max=epochs) stepped once per epoch, as the chapter does; constant;
    onecycle: OneCycleLR's shape per step (cosine up from lr/25 over the first 30%, then down to
    lr/25e4). Warm-up multiplies any of them by a linear ramp over `warmup_epochs`, per step.
    linear (the speedruns' triangle): up over the warm-up, then straight down to the last step; from
    lr_start_fraction and to lr_end_fraction of the peak (both 0 by default; airbench's 0.2 and 0.07).
    """
    if recipe.schedule == "linear":
        now, warm, total = epoch * steps + step, recipe.warmup_epochs * steps, recipe.epochs * steps
        start, end = recipe.lr_start_fraction, recipe.lr_end_fraction
        if now < warm:
            return recipe.lr * min(1.0, start + (1 - start) * (now + 1) / warm)
        return recipe.lr * min(1.0, end + (1 - end) * (total - now) / (total - warm))
    if recipe.schedule == "constant":
        lr = recipe.lr
    elif recipe.schedule == "onecycle":
        t, peak = (epoch * steps + step) / (recipe.epochs * steps), 0.3
        start, end = recipe.lr / 25, recipe.lr / 25e4
        if t < peak:
            lr = start + (recipe.lr - start) * 0.5 * (1 - math.cos(math.pi * t / peak))
        else:
            lr = end + (recipe.lr - end) * 0.5 * (1 + math.cos(math.pi * (t - peak) / (1 - peak)))
    else:
        lr = 0.5 * recipe.lr * (1 + math.cos(math.pi * epoch / recipe.epochs))
    if recipe.warmup_epochs:
        lr *= min(1.0, (epoch * steps + step + 1) / (recipe.warmup_epochs * steps))
    return lr


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float, epochs_done: float = 0.0) -> None:
    """Every group at `lr` times its scale; a group that trains only until an epoch is at 0 from then on
    (a rate of 0 moves nothing: momentum and weight decay are multiplied by it too)."""
    for group in optimizer.param_groups:
        frozen = epochs_done >= group.get("trains_until_epoch", math.inf)
        group["lr"] = 0.0 if frozen else lr * group.get("lr_scale", 1.0)
