"""The training loop.

Read top to bottom: prepare (split, statistics, model, optimizer, loaders), then for each epoch
set the learning rate, train, evaluate, and hand the epoch's row to the callbacks. The loop knows
nothing about files or plots: `RunWriter` and `ConsolePrinter` (callbacks.py) are callbacks like
any other.
"""

from __future__ import annotations

import math
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import Dataset, load_dataset
from .splits import channel_stats, group_take, parse_count, stratified_take
from .device import autocast, resolve_device, resolve_precision, tune_cpu_allocator, warn_if_emulated
from . import distributed
from .distributed import Cluster
from .errors import CnnlabError, brief
from .augment import Augmentation, mix
from .evaluate import evaluate
from .finetune import load_weights, parameter_groups
from .loader import Loader, Normalizer
from .lookahead import Lookahead
from .muon import SGDMuon
from .models import build_model, count_parameters
from .recipe import Recipe
from .callbacks import ConsolePrinter, RunWriter
from .runs import CHECKPOINT_FORMAT, RunFolder, RunLock, claim_run_folder
from .names import shown
from .runfiles import load_checkpoint, recorded_source, resolve_checkpoint

CHECK_EVERY = 25  # steps between finiteness reads on accelerators (each read waits for the device)
WHITENING_IMAGES = 5000  # training images whose patches set a whitening first layer


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
    for group in groups:
        group["weight_decay"] = (recipe.weight_decay / (recipe.lr * group["lr_scale"]) if recipe.decoupled_weight_decay
                                 else recipe.weight_decay)
    if recipe.muon_lr:  # the convolution filters take Muon steps (cnnlab.muon): their own rate, no decay
        groups = _own_group(groups, lambda p: p.ndim == 4, lr_scale=recipe.muon_lr / recipe.lr, weight_decay=0.0,
                            momentum=0.0, muon_momentum=recipe.muon_momentum)
    if recipe.whiten_bias_epochs:  # a speedrun model (validated): the whitening bias's rate drops to 0 after it
        whiten_bias = model.whitening_bias()
        groups = _own_group(groups, lambda p: p is whiten_bias, trains_until_epoch=recipe.whiten_bias_epochs)
    for group in groups:
        group["lr"] = recipe.lr * group["lr_scale"]
    return SGDMuon(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov, foreach=True)


def _own_group(groups: list[dict], chosen, **settings) -> list[dict]:
    """Each group split in two: the parameters `chosen` picks, with `settings` on top of the group's own,
    and the rest; empty halves dropped."""
    split = []
    for group in groups:
        rest = [p for p in group["params"] if not chosen(p)]
        picked = [p for p in group["params"] if chosen(p)]
        split += [g for g in ({**group, "params": rest}, {**group, "params": picked, **settings}) if g["params"]]
    return split


def compiled(module: torch.nn.Module, mode: str) -> torch.nn.Module:
    """The module itself for mode "off", else its torch.compile'd form (sharing its parameters)."""
    return module if mode == "off" else torch.compile(module, mode=None if mode == "default" else mode)


def learning_rate(recipe: Recipe, epoch: int, step: int = 0, steps: int = 1) -> float:
    """The rate at 0-based `step` of `steps` in 0-based `epoch`.

    cosine: CosineAnnealingLR(T_max=epochs) stepped once per epoch, as the chapter does; constant;
    onecycle: OneCycleLR's shape per step (cosine up from lr/25 over the first 30%, then down to
    lr/25e4). Warm-up multiplies any of them by a linear ramp over `warmup_epochs`, per step.
    linear (the speedruns' triangle): up over the warm-up, then straight down to 0 at the last step.
    """
    if recipe.schedule == "linear":
        now, warm, total = epoch * steps + step, recipe.warmup_epochs * steps, recipe.epochs * steps
        return recipe.lr * min(1.0, (now + 1) / warm if now < warm else (total - now) / (total - warm))
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


@dataclass
class TrainState:
    """Everything the loop owns; callbacks read it, and a checkpoint is made from it."""

    recipe: Recipe
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: Loader
    classes: list[str]
    mean: tuple
    std: tuple
    device: torch.device
    precision: str
    forward: torch.nn.Module | None = None  # what runs the batches: the model, or its torch.compile'd form
    epoch: int = 0  # epochs completed
    rows: list[dict] = field(default_factory=list)
    best_metric: str = "test_acc"
    best_value: float = -math.inf
    best_epoch: int = 0
    stopped_early: bool = False
    ema: torch.nn.Module | None = None    # AveragedModel of the weights, when recipe.ema
    scaler: torch.amp.GradScaler | None = None  # fp16 on CUDA
    lookahead: Lookahead | None = None    # slow weights, when recipe.lookahead
    cluster: Cluster = field(default_factory=Cluster.single)
    ddp: torch.nn.Module | None = None    # DistributedDataParallel around the model, under torchrun
    rank_states: list | None = None       # every rank's loader and partial sums, gathered for the checkpoint
    notes: list[str] = field(default_factory=list)
    partial: dict | None = None   # sums of an epoch interrupted mid-way: loss_sum, correct, seen, seconds
    stop_signal: int | None = None  # set by SIGINT/SIGTERM: finish the step, checkpoint, stop

    def checkpoint(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "model": self.recipe.model,
            "num_classes": len(self.classes),
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
            "image_size": self.recipe.image_size,
            "epoch": self.epoch,
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "loader": self.train_loader.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "recipe": self.recipe.to_dict(),
            "rows": list(self.rows),
            "best": {"metric": self.best_metric, "value": self.best_value, "epoch": self.best_epoch},
            "partial": self.partial,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "lookahead": self.lookahead.state_dict() if self.lookahead is not None else None,
            "world_size": self.cluster.world_size,
            "ranks": self.rank_states,  # None alone; else [{loader, partial}] per rank
        }

    def ema_checkpoint(self) -> dict:
        """The averaged weights as a checkpoint of their own (for evaluate, predict, export)."""
        payload = self.checkpoint()
        payload["state_dict"] = {k: v.detach().cpu() for k, v in self.ema.module.state_dict().items()}
        return payload

    def restore(self, checkpoint: dict) -> None:
        """Continue exactly where `checkpoint` left off: weights, optimizer, generators, history, best."""
        try:
            self._restore(checkpoint)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:  # fields of the wrong shape
            raise CnnlabError(f"the checkpoint cannot be resumed: it does not fit this run ({brief(e)}); "
                              "start the run again") from None

    def _restore(self, checkpoint: dict) -> None:
        world = checkpoint.get("world_size", 1)
        if world != self.cluster.world_size:
            raise CnnlabError(f"this run was trained by {world} process(es) and is resumed by {self.cluster.world_size}; "
                              f"resume it with the same number (torchrun --nproc-per-node {world} ...)")
        own = checkpoint["ranks"][self.cluster.rank] if checkpoint.get("ranks") else None
        self.model.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.train_loader.load_state_dict(own["loader"] if own else checkpoint["loader"])
        torch.set_rng_state(checkpoint["torch_rng"])
        self.epoch, self.rows = checkpoint["epoch"], list(checkpoint["rows"])
        best = checkpoint["best"]
        self.best_metric, self.best_value, self.best_epoch = best["metric"], best["value"], best["epoch"]
        self.partial = own["partial"] if own else checkpoint.get("partial")
        if self.ema is not None and checkpoint.get("ema") is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        if self.scaler is not None and checkpoint.get("scaler") is not None:
            self.scaler.load_state_dict(checkpoint["scaler"])
        if self.lookahead is not None and checkpoint.get("lookahead") is not None:
            self.lookahead.load_state_dict(checkpoint["lookahead"])


@dataclass
class TrainResult:
    run_dir: Path | None
    rows: list[dict]
    summary: dict
    model: torch.nn.Module


def train(recipe: Recipe, data: Dataset | str = "cifar10", *, data_root: str | Path = "data",
          runs_dir: str | Path | None = "runs", name: str | None = None, progress: bool = True,
          callbacks: list | None = None, log=None, plots: bool = True, tensorboard: bool = False,
          resume_from: dict | None = None, cluster: Cluster | None = None) -> TrainResult:
    """Train `recipe` on `data` (a Dataset, or a source for `load_dataset`) and return the result.

    With `runs_dir=None` nothing is written to disk (handy in notebooks and tests). With a run
    folder, `plots` draws its figures at the end and `tensorboard` adds TensorBoard event files.
    `resume_from` is a checkpoint of the run `runs_dir/name` to continue (see `resume`).

    Raises Interrupted after SIGINT/SIGTERM (a checkpoint is written first) and Diverged when the
    loss stops being finite (the last good checkpoint is kept).

    Under torchrun (or with a `cluster`), this process is one rank of a data-parallel job: it trains
    on its slice of every global batch, and only rank 0 prints and writes the run folder.
    """
    started = time.perf_counter()
    started_here = cluster is None
    cluster = cluster or distributed.start(recipe.device)
    finished = False
    try:
        result = _train(recipe, data, data_root, runs_dir, name, progress, callbacks, log, plots, tensorboard,
                        resume_from, cluster, started)
        finished = True
        return result
    except RuntimeError as e:
        if cluster.distributed and distributed.is_peer_failure(e):
            raise distributed.PeerLost(cluster, runs_dir) from None
        raise
    finally:
        if started_here:
            distributed.stop(cluster, finished)


def _train(recipe, data, data_root, runs_dir, name, progress, callbacks, log, plots, tensorboard, resume_from,
           cluster: Cluster, started: float) -> TrainResult:
    if not cluster.is_main:  # the other ranks train and stay quiet
        runs_dir, progress, plots, tensorboard, callbacks = None, False, False, False, []
    if tensorboard and runs_dir is not None:
        from .tensorboard import require_tensorboard

        require_tensorboard()  # before any time is spent
    if not isinstance(data, Dataset):
        data = load_dataset(data, root=data_root, image_size=recipe.image_size, progress=progress)
    device = resolve_device(recipe.device)
    if cluster.backend == "nccl":
        device = torch.device("cuda", cluster.local_rank)  # one GPU per process
    precision = resolve_precision(recipe.precision, device)
    if cluster.is_main:
        warn_if_emulated(precision, device)
    if device.type == "cpu":
        tune_cpu_allocator()
    torch.manual_seed(recipe.seed)

    # Which training images are trained on, which are held out for validation.
    all_labels = data.train_labels
    val_count = parse_count(recipe.val_split, len(all_labels), "--val-split")
    if recipe.val_groups:  # whole groups (sessions, scenes) on one side: no near-twins across the split
        val_index, train_index = group_take(data.train_files, all_labels, val_count, recipe.val_groups, recipe.seed)
    else:
        val_index, train_index = stratified_take(all_labels, val_count, recipe.seed)
    subset_count = parse_count(recipe.train_subset, len(train_index), "--train-subset")
    if subset_count:
        picked, _ = stratified_take(all_labels[train_index], subset_count, recipe.seed + 1)
        train_index = train_index[picked]
    # Every training image (no hold-out, no subset): the dataset's own tensor, not a 150 MB copy of it.
    everything = len(train_index) == len(all_labels)
    train_images = data.train_images if everything else data.train_images[train_index]
    mean, std = data.known_stats or channel_stats(train_images)
    normalize = Normalizer(mean, std)

    cl = recipe.channels_last and device.type != "mps"
    model = build_model(recipe.model, data.num_classes, **recipe.model_options)
    if hasattr(model, "initialise_from_data") and not recipe.weights and resume_from is None:
        model.initialise_from_data(normalize(train_images[:WHITENING_IMAGES]))  # data-dependent first layer
    notes = load_weights(model, recipe.weights) if recipe.weights and resume_from is None else []
    model = model.to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    if recipe.sync_bn and cluster.distributed:
        model = distributed.synchronize_batch_norm(model, device)  # same parameters and state-dict names
    optimizer = make_optimizer(model, recipe)
    train_loader = Loader(train_images, all_labels[train_index], recipe.batch_size, normalize, device=device,
                          augment=Augmentation.of(recipe), seed=recipe.seed, channels_last=cl, rank=cluster.rank,
                          world_size=cluster.world_size)
    eval_loaders = {"test": Loader(data.test_images, data.test_labels, recipe.eval_batch_size, normalize,
                                   device=device, channels_last=cl)}
    if val_count:
        eval_loaders["val"] = Loader(data.train_images[val_index], all_labels[val_index], recipe.eval_batch_size,
                                     normalize, device=device, channels_last=cl)

    # The compiled module shares the model's parameters; the plain one is what checkpoints hold.
    forward = compiled(model, recipe.compile)
    state = TrainState(recipe, model, optimizer, train_loader, data.classes, mean, std, device, precision, forward,
                       best_metric="val_acc" if val_count else "test_acc", notes=notes, cluster=cluster)
    if cluster.distributed:  # gradients averaged over the ranks; evaluation uses the plain model on every rank
        from torch.nn.parallel import DistributedDataParallel

        # DDP sends rank 0's buffers (batch-norm running statistics) before every forward; the loop sends
        # them once more at the end of each epoch, so every rank evaluates exactly rank 0's model.
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        state.ddp = compiled(ddp, recipe.compile)
    if recipe.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        state.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema), use_buffers=True)
    if precision == "fp16" and device.type == "cuda":
        state.scaler = torch.amp.GradScaler("cuda")
    if recipe.lookahead:
        state.lookahead = Lookahead(model, recipe.lookahead)
    callbacks = list(callbacks or [])
    if progress:
        callbacks.insert(0, ConsolePrinter(log or (lambda line: print(line, flush=True))))
    if resume_from is not None:
        state.restore(resume_from)
    run_dir = lock = None
    if runs_dir is not None:
        if resume_from is None:
            run_dir = claim_run_folder(runs_dir, name, stem=f"{recipe.name}-{recipe.model}")
        else:
            run_dir = Path(runs_dir) / name
        lock = RunLock(run_dir)  # one process per run folder, also across --resume
        callbacks.append(RunWriter(RunFolder(run_dir), data, train_count=len(train_index), val_count=val_count,
                                   resumed=resume_from is not None))
        if plots:
            from .plots import PlotWriter

            callbacks.append(PlotWriter(run_dir, data))
        if tensorboard:
            from .tensorboard import TensorBoardWriter

            callbacks.append(TensorBoardWriter(run_dir / "tensorboard"))
    try:
        with StopOnSignal(state):
            _emit(callbacks, "on_train_start", state)
            _loop(state, recipe, eval_loaders, callbacks, progress, len(train_index), run_dir)
    except CnnlabError:
        if run_dir is not None and resume_from is None and state.epoch == 0:
            shutil.rmtree(run_dir, ignore_errors=True)  # failed before its first checkpoint: nothing worth keeping
        raise
    finally:
        if lock is not None:
            lock.release()

    last = state.rows[-1]
    summary = {
        "epochs": state.epoch,
        "epochs_planned": recipe.epochs,
        "stopped_early": state.stopped_early,
        "final_test_acc": last["test_acc"],
        "final_train_acc": last["train_acc"],
        "best_epoch": state.best_epoch,
        "best_metric": state.best_metric,
        "best_value": state.best_value,
        "wall_seconds": time.perf_counter() - started,
        "train_seconds": sum(r["seconds"] for r in state.rows),
        "device": str(device),
        "precision": precision,
        "parameters": count_parameters(model),
        "run_dir": str(run_dir) if run_dir else None,
        "world_size": cluster.world_size,
    }
    if "val_acc" in last:
        summary["final_val_acc"] = last["val_acc"]
    if "tta_test_acc" in last:
        summary["final_tta_test_acc"] = last["tta_test_acc"]
    _emit(callbacks, "on_train_end", state, summary)
    return TrainResult(run_dir, state.rows, summary, model)


# What a checkpoint needs besides the model to continue its run exactly (TrainState.restore reads them).
RESUME_FIELDS = {"recipe": dict, "optimizer": dict, "loader": dict, "torch_rng": torch.Tensor, "rows": list, "best": dict}


def resume(run_dir: str | Path, data: Dataset | str | None = None, **options) -> TrainResult:
    """Continue a stopped or killed run from its last.pt, with the run's own recipe and data.

    The result equals an uninterrupted run's: every generator, the optimizer, the history and the
    early-stopping state come from the checkpoint, and an epoch stopped mid-way resumes at its step.
    """
    from .recipe import recipe_from_dict

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CnnlabError(f"{run_dir}: no such run folder; pass the folder of the run to continue")
    if (run_dir / "summary.json").is_file():
        raise CnnlabError(f"{run_dir} has finished (summary.json is written); nothing to resume")
    if not (run_dir / "last.pt").is_file():
        raise CnnlabError(f"{run_dir} has no checkpoint yet (it stopped before its first epoch ended); start it again")
    checkpoint = load_checkpoint(resolve_checkpoint(run_dir, "last.pt"))
    missing = [k for k, kind in RESUME_FIELDS.items() if not isinstance(checkpoint.get(k), kind)]
    if missing:
        raise CnnlabError(f"{shown(run_dir / 'last.pt')} cannot be resumed (its '{missing[0]}' is missing or damaged); "
                          "start the run again")
    recipe = recipe_from_dict(checkpoint["recipe"], where=f"{run_dir}/last.pt")
    if data is None:
        data = recorded_source(run_dir)
    return train(recipe, data, runs_dir=run_dir.parent, name=run_dir.name, resume_from=checkpoint, **options)


def _loop(state: TrainState, recipe: Recipe, eval_loaders: dict, callbacks: list, progress: bool, train_count: int,
          run_dir: Path | None) -> None:
    """The epochs: set the rate, train, evaluate, hand the row to the callbacks; stop early or on a signal.

    Extension points later features hook into: on_epoch_end (early stopping, EMA, plots), the step
    (regularizers, gradient scaling), and TrainState.checkpoint (resume)."""
    for epoch in range(state.epoch, recipe.epochs):
        lr = learning_rate(recipe, epoch, 0, len(state.train_loader))  # the epoch's rate (per-step schedules set each step)
        set_learning_rate(state.optimizer, lr, epoch)
        if state.stop_signal is None:
            train_loss, train_acc, seconds, seen = train_one_epoch(state, progress and sys.stderr.isatty(), epoch, run_dir)
        if state.stop_signal is not None:  # mid-epoch: the sums so far are in state.partial
            _gather_rank_states(state)
            _emit(callbacks, "on_interrupt", state)
            raise Interrupted(state.stop_signal, epoch + 1, state.train_loader.position, run_dir)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_acc": train_acc, "train_images": seen}
        # A point on the learning curve may be judged in the training precision; a result, or a row that
        # selects a model on a validation split (best.pt, early stopping), is judged in float32.
        curve_only = recipe.eval_precision == "auto" and epoch + 1 < recipe.epochs and "val" not in eval_loaders
        with autocast(state.device, state.precision if curve_only else "fp32"):
            for split, loader in sorted(eval_loaders.items(), key=lambda kv: kv[0] != "val"):
                result = evaluate(state.forward, loader)
                row[f"{split}_loss"], row[f"{split}_acc"] = result["loss"], result["acc"]
                if state.ema is not None:
                    row[f"ema_{split}_acc"] = evaluate(state.ema.module, loader)["acc"]
        if recipe.tta and epoch + 1 == recipe.epochs:  # the final model, also judged over 10 views
            with autocast(state.device, state.precision if recipe.tta_precision == "auto" else "fp32"):
                tta = evaluate(state.forward, eval_loaders["test"], tta=True)
            row["tta_test_acc"], row["tta_test_loss"] = tta["acc"], tta["loss"]
        row["seconds"] = seconds
        row["images_per_s"] = train_count / seconds
        state.epoch = epoch + 1
        state.rows.append(row)
        if row[state.best_metric] > state.best_value:
            state.best_value, state.best_epoch = row[state.best_metric], epoch + 1
        _gather_rank_states(state)
        _emit(callbacks, "on_epoch_end", state, row)
        if recipe.early_stop and state.epoch - state.best_epoch >= recipe.early_stop:
            state.stopped_early = True  # no better val_acc for `early_stop` epochs: best.pt holds the winner
            break
        if state.cluster.anyone(state.stop_signal is not None):  # arrived during evaluation: the checkpoint is written
            raise Interrupted(state.stop_signal or signal.SIGTERM, epoch + 1, 0, run_dir)


def _gather_rank_states(state: TrainState) -> None:
    """Under DDP each rank's loader (its augmentation stream) and partial sums differ: rank 0 keeps them all."""
    if state.cluster.distributed:
        state.rank_states = state.cluster.gather({"loader": state.train_loader.state_dict(), "partial": state.partial})


def train_one_epoch(state: TrainState, show_progress: bool, epoch: int, run_dir: Path | None = None,
                    ) -> tuple[float, float, float, int]:
    """One pass over the training loader: (mean loss, accuracy, seconds, images seen by every rank together).
    Loss and accuracy are summed on the device and read once
    at the end, so the loop never waits on the device mid-epoch (finiteness is checked on the device
    too, and read every step on the CPU, where reading is free, else every CHECK_EVERY steps).

    A signal ends the pass after the current step with the sums kept in state.partial; a pass
    resumed from such a checkpoint starts from those sums and the loader's saved position.
    """
    from tqdm import tqdm

    optimizer, recipe, cluster = state.optimizer, state.recipe, state.cluster
    forward = state.ddp or (state.forward if state.forward is not None else state.model)
    state.model.train()
    partial = state.partial or {}
    loss_sum = torch.as_tensor(partial.get("loss_sum", 0.0), device=state.device, dtype=torch.float32).clone()
    correct = torch.as_tensor(partial.get("correct", 0), device=state.device, dtype=torch.long).clone()
    seen, seconds_before = partial.get("seen", 0), partial.get("seconds", 0.0)
    finite = torch.ones((), device=state.device, dtype=torch.bool)
    check_every = 1 if state.device.type == "cpu" else CHECK_EVERY
    start = time.perf_counter()
    first_step = state.train_loader.position
    batches = tqdm(state.train_loader, desc=f"epoch {epoch + 1:2d}", leave=False, disable=not show_progress, unit="batch",
                   initial=first_step, total=len(state.train_loader))
    per_step_lr = recipe.schedule in ("onecycle", "linear") or recipe.warmup_epochs > 0
    steps, total_steps = len(state.train_loader), recipe.epochs * len(state.train_loader)
    mixing = recipe.mixup > 0 or recipe.cutmix > 0
    for step, (x, y) in enumerate(batches, start=first_step + 1):
        if per_step_lr:
            set_learning_rate(optimizer, learning_rate(recipe, epoch, step - 1, len(state.train_loader)),
                              epoch + (step - 1) / len(state.train_loader))
        if mixing:
            x, y, y_partner, weight = mix(x, y, recipe.mixup, recipe.cutmix)
        with autocast(state.device, state.precision):
            logits = forward(x)
            loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
            if mixing:
                loss = weight * loss + (1 - weight) * F.cross_entropy(logits, y_partner, label_smoothing=recipe.label_smoothing)
        finite &= torch.isfinite(loss.detach())
        if step % check_every == 0 and not bool(finite):
            raise Diverged(epoch + 1, step, len(state.train_loader), optimizer.param_groups[-1]["lr"], state.epoch, run_dir)
        optimizer.zero_grad(set_to_none=True)
        if state.scaler is not None:  # fp16: scale the loss so small gradients survive, unscale before the step
            state.scaler.scale(loss).backward()
            state.scaler.step(optimizer)
            state.scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if state.ema is not None:
            state.ema.update_parameters(state.model)
        if state.lookahead is not None:
            state.lookahead.after_step(state.model, epoch * steps + step, total_steps)
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(dim=1) == y).sum()
        seen += len(y)
        stopping = state.stop_signal is not None
        if cluster.distributed:  # every rank stops at the same step, or none does: decided together
            stopping = step % check_every == 0 and cluster.anyone(stopping)
            if stopping and state.stop_signal is None:
                state.stop_signal = signal.SIGTERM  # a peer was told to stop
        if stopping and step < len(state.train_loader):
            state.partial = {"loss_sum": loss_sum.cpu(), "correct": correct.cpu(), "seen": seen,
                             "seconds": seconds_before + time.perf_counter() - start}
            batches.close()
            return math.nan, math.nan, math.nan, seen
    if not bool(finite):
        raise Diverged(epoch + 1, len(state.train_loader), len(state.train_loader), optimizer.param_groups[-1]["lr"], state.epoch, run_dir)
    state.partial = None
    if state.lookahead is not None and epoch + 1 == recipe.epochs:
        state.lookahead.finish(state.model)
    if cluster.distributed:  # the epoch's metrics over every rank's images; rank 0's running statistics for all
        cluster.broadcast_buffers(state.model)
        totals = cluster.all_sum(torch.stack([loss_sum.double(), correct.double(),
                                              torch.tensor(float(seen), device=loss_sum.device, dtype=torch.float64)]))
        loss_sum, correct, seen = totals[0], totals[1], int(totals[2])
    loss_value = float(loss_sum) / seen  # the one synchronisation of the epoch
    seconds = seconds_before + time.perf_counter() - start
    return loss_value, 100.0 * int(correct) / seen, seconds, seen


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after a checkpoint was written; `cnnlab train --resume` continues it."""

    def __init__(self, signum: int, epoch: int, step: int, run_dir: Path | None):
        self.signum, self.epoch, self.step, self.run_dir = signum, epoch, step, run_dir
        where = f"epoch {epoch}, step {step}" if step else f"the end of epoch {epoch}"
        super().__init__(f"stopped by {signal.Signals(signum).name} at {where}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class Diverged(CnnlabError):
    def __init__(self, epoch: int, step: int, steps: int, lr: float, good_epoch: int, run_dir: Path | None):
        kept = (f"the last good checkpoint (epoch {good_epoch}) is kept in {run_dir / 'last.pt'}" if run_dir and good_epoch
                else "nothing was kept")
        super().__init__(f"the training loss became NaN or infinite in epoch {epoch}, step {step} of {steps}, at learning "
                         f"rate {lr:.4g}; {kept}. Try a lower --lr, --precision fp32, or a run with batch norm")


class StopOnSignal:
    """While training: the first SIGINT or SIGTERM asks the loop to stop after its current step
    (a second SIGINT stops at once). Only in the main thread, where Python can install handlers."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, state: TrainState):
        self.state, self.previous = state, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.state.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.state.stop_signal = signum

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False


def _emit(callbacks, event: str, *args) -> None:
    for cb in callbacks:
        handler = getattr(cb, event, None)
        if handler is not None:
            handler(*args)
