"""What a training run holds while it runs: the network's handles, the progress so far, and the checkpoint
made from them (and restored into them on --resume)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .distributed import Cluster
from .errors import CnnlabError, brief
from .loader import Loader
from .lookahead import Lookahead
from .recipe import Recipe
from .runs import CHECKPOINT_FORMAT

# What a checkpoint needs besides the model to continue its run exactly (TrainState.restore reads them).
RESUME_FIELDS = {
    "recipe": dict,
    "optimizer": dict,
    "loader": dict,
    "torch_rng": torch.Tensor,
    "rows": list,
    "best": dict,
}


@dataclass
class Network:
    """One network and what is wrapped around it. `model` holds the weights checkpoints save; the others
    share its parameters or follow it."""

    model: torch.nn.Module
    forward: torch.nn.Module  # what runs the batches: the model, or its torch.compile'd form
    ddp: torch.nn.Module | None = None  # DistributedDataParallel around the model, under torchrun
    ema: torch.nn.Module | None = None  # AveragedModel of the weights, when recipe.ema
    lookahead: Lookahead | None = None  # slow weights, when recipe.lookahead
    scaler: torch.amp.GradScaler | None = None  # fp16 on CUDA

    @property
    def trainer(self) -> torch.nn.Module:
        """What a training step calls: DDP when distributed (it averages the gradients), else `forward`."""
        return self.ddp if self.ddp is not None else self.forward


@dataclass
class Progress:
    """Where the run is: counted, remembered and checkpointed."""

    epoch: int = 0  # epochs completed
    rows: list[dict] = field(default_factory=list)
    best_metric: str = "test_acc"
    best_value: float = -math.inf
    best_epoch: int = 0
    stopped_early: bool = False
    partial: dict | None = None  # sums of an epoch interrupted mid-way: loss_sum, correct, seen, seconds
    stop_signal: int | None = None  # set by SIGINT/SIGTERM: finish the step, checkpoint, stop


@dataclass
class TrainState:
    """Everything the loop owns; callbacks read it, and a checkpoint is made from it."""

    recipe: Recipe
    net: Network
    optimizer: torch.optim.Optimizer
    train_loader: Loader
    classes: list[str]
    mean: tuple
    std: tuple
    device: torch.device
    precision: str
    cluster: Cluster = field(default_factory=Cluster.single)
    progress: Progress = field(default_factory=Progress)
    notes: list[str] = field(default_factory=list)
    rank_states: list | None = None  # every rank's loader and partial sums, gathered for the checkpoint
    class_weight: torch.Tensor | None = None  # the cross-entropy's per-class weights (recipe.class_weights)

    def checkpoint(self, weights: torch.nn.Module | None = None) -> dict:
        """The run as it stands: `weights` (default: the model's) with everything needed to continue."""
        p, net = self.progress, self.net
        return {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "model": self.recipe.model,
            "num_classes": len(self.classes),
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
            "image_size": self.recipe.image_size,
            "epoch": p.epoch,
            "state_dict": {k: v.detach().cpu() for k, v in (weights or net.model).state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "loader": self.train_loader.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "recipe": self.recipe.to_dict(),
            "rows": list(p.rows),
            "best": {"metric": p.best_metric, "value": p.best_value, "epoch": p.best_epoch},
            "partial": p.partial,
            "ema": net.ema.state_dict() if net.ema is not None else None,
            "scaler": net.scaler.state_dict() if net.scaler is not None else None,
            "lookahead": net.lookahead.state_dict() if net.lookahead is not None else None,
            "world_size": self.cluster.world_size,
            "ranks": self.rank_states,  # None alone; else [{loader, partial}] per rank
        }

    def ema_checkpoint(self) -> dict:
        """The averaged weights as a checkpoint of their own (for evaluate, predict, export)."""
        return self.checkpoint(self.net.ema.module)

    def restore(self, checkpoint: dict) -> None:
        """Continue exactly where `checkpoint` left off: weights, optimizer, generators, history, best."""
        try:
            self._restore(checkpoint)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:  # fields of the wrong shape
            raise CnnlabError(
                f"the checkpoint cannot be resumed: it does not fit this run ({brief(e)}); start the run again"
            ) from None

    def _restore(self, checkpoint: dict) -> None:
        world = checkpoint.get("world_size", 1)
        if world != self.cluster.world_size:
            raise CnnlabError(
                f"this run was trained by {world} process(es) and is resumed by {self.cluster.world_size}; "
                f"resume it with the same number (torchrun --nproc-per-node {world} ...)"
            )
        own = checkpoint["ranks"][self.cluster.rank] if checkpoint.get("ranks") else None
        net, p = self.net, self.progress
        net.model.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.train_loader.load_state_dict(own["loader"] if own else checkpoint["loader"])
        torch.set_rng_state(checkpoint["torch_rng"])
        p.epoch, p.rows = checkpoint["epoch"], list(checkpoint["rows"])
        best = checkpoint["best"]
        p.best_metric, p.best_value, p.best_epoch = best["metric"], best["value"], best["epoch"]
        p.partial = own["partial"] if own else checkpoint.get("partial")
        for part, key in ((net.ema, "ema"), (net.scaler, "scaler"), (net.lookahead, "lookahead")):
            if part is not None and checkpoint.get(key) is not None:
                part.load_state_dict(checkpoint[key])
