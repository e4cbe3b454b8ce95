"""The training loop.

Read top to bottom: prepare (split, statistics, model, optimizer, loaders), then for each epoch
set the learning rate, train, evaluate, and hand the epoch's row to the callbacks. The loop knows
nothing about files or plots: `RunWriter` and `ConsolePrinter` are callbacks like any other.

Callbacks may define on_train_start(state), on_epoch_end(state, row) and on_train_end(state, summary).
"""

from __future__ import annotations

import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .data import Dataset, channel_stats, load_dataset, parse_count, stratified_take
from .device import autocast, resolve_device, resolve_precision, tune_cpu_allocator
from .evaluate import evaluate
from .loader import Loader, Normalizer
from .models import build_model, count_parameters
from .recipe import Recipe
from .runs import CHECKPOINT_FORMAT, RunFolder, claim_run_folder


def learning_rate(recipe: Recipe, epoch: int) -> float:
    """The rate for 0-based `epoch`; cosine matches CosineAnnealingLR(T_max=epochs) stepped per epoch."""
    if recipe.schedule == "constant":
        return recipe.lr
    return 0.5 * recipe.lr * (1 + math.cos(math.pi * epoch / recipe.epochs))


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
        }


@dataclass
class TrainResult:
    run_dir: Path | None
    rows: list[dict]
    summary: dict
    model: torch.nn.Module


def train(recipe: Recipe, data: Dataset | str = "cifar10", *, data_root: str | Path = "data",
          runs_dir: str | Path | None = "runs", name: str | None = None, progress: bool = True,
          callbacks: list | None = None, log=None, plots: bool = True, tensorboard: bool = False) -> TrainResult:
    """Train `recipe` on `data` (a Dataset, or a source for `load_dataset`) and return the result.

    With `runs_dir=None` nothing is written to disk (handy in notebooks and tests). With a run
    folder, `plots` draws its figures at the end and `tensorboard` adds TensorBoard event files.
    """
    started = time.perf_counter()
    if tensorboard and runs_dir is not None:
        from .tensorboard import require_tensorboard

        require_tensorboard()  # before any time is spent
    if not isinstance(data, Dataset):
        data = load_dataset(data, root=data_root, image_size=recipe.image_size, progress=progress)
    device = resolve_device(recipe.device)
    precision = resolve_precision(recipe.precision, device)
    if device.type == "cpu":
        tune_cpu_allocator()
    torch.manual_seed(recipe.seed)

    # Which training images are trained on, which are held out for validation.
    all_labels = data.train_labels
    val_count = parse_count(recipe.val_split, len(all_labels), "--val-split")
    val_index, train_index = stratified_take(all_labels, val_count, recipe.seed)
    subset_count = parse_count(recipe.train_subset, len(train_index), "--train-subset")
    if subset_count:
        picked, _ = stratified_take(all_labels[train_index], subset_count, recipe.seed + 1)
        train_index = train_index[picked]
    train_images = data.train_images[train_index]
    mean, std = data.known_stats or channel_stats(train_images)
    normalize = Normalizer(mean, std)

    cl = recipe.channels_last and device.type != "mps"
    model = build_model(recipe.model, data.num_classes).to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay, nesterov=recipe.nesterov, foreach=True)
    train_loader = Loader(train_images, all_labels[train_index], recipe.batch_size, normalize, device=device,
                          train=True, crop_padding=recipe.crop_padding, flip=recipe.flip, seed=recipe.seed,
                          channels_last=cl)
    eval_loaders = {"test": Loader(data.test_images, data.test_labels, recipe.eval_batch_size, normalize,
                                   device=device, channels_last=cl)}
    if val_count:
        eval_loaders["val"] = Loader(data.train_images[val_index], all_labels[val_index], recipe.eval_batch_size,
                                     normalize, device=device, channels_last=cl)

    # The compiled module shares the model's parameters; the plain one is what checkpoints hold.
    forward = model if recipe.compile == "off" else torch.compile(model, mode=None if recipe.compile == "default" else recipe.compile)
    state = TrainState(recipe, model, optimizer, train_loader, data.classes, mean, std, device, precision, forward,
                       best_metric="val_acc" if val_count else "test_acc")
    callbacks = list(callbacks or [])
    if progress:
        callbacks.insert(0, ConsolePrinter(log or (lambda line: print(line, flush=True))))
    run_dir = None
    if runs_dir is not None:
        run_dir = claim_run_folder(runs_dir, name, stem=f"{recipe.name}-{recipe.model}")
        callbacks.append(RunWriter(RunFolder(run_dir), data, train_count=len(train_index), val_count=val_count))
        if plots:
            from .plots import PlotWriter

            callbacks.append(PlotWriter(run_dir, data))
        if tensorboard:
            from .tensorboard import TensorBoardWriter

            callbacks.append(TensorBoardWriter(run_dir / "tensorboard"))
    _emit(callbacks, "on_train_start", state)

    # Extension points later features hook into: on_epoch_end (early stopping, EMA, plots),
    # the step (regularizers, gradient scaling), and TrainState.checkpoint (resume).
    for epoch in range(state.epoch, recipe.epochs):
        lr = learning_rate(recipe, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        train_loss, train_acc, seconds = train_one_epoch(state, progress and sys.stderr.isatty(), epoch)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_acc": train_acc}
        for split, loader in sorted(eval_loaders.items(), key=lambda kv: kv[0] != "val"):
            result = evaluate(state.forward, loader)
            row[f"{split}_loss"], row[f"{split}_acc"] = result["loss"], result["acc"]
        row["seconds"] = seconds
        row["images_per_s"] = len(train_index) / seconds
        state.epoch = epoch + 1
        state.rows.append(row)
        if row[state.best_metric] > state.best_value:
            state.best_value, state.best_epoch = row[state.best_metric], epoch + 1
        _emit(callbacks, "on_epoch_end", state, row)
        if recipe.early_stop and state.epoch - state.best_epoch >= recipe.early_stop:
            state.stopped_early = True  # no better val_acc for `early_stop` epochs: best.pt holds the winner
            break

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
    }
    if "val_acc" in last:
        summary["final_val_acc"] = last["val_acc"]
    _emit(callbacks, "on_train_end", state, summary)
    return TrainResult(run_dir, state.rows, summary, model)


def train_one_epoch(state: TrainState, show_progress: bool, epoch: int) -> tuple[float, float, float]:
    """One pass over the training loader. Loss and accuracy are summed on the device and read
    once at the end, so the loop never waits on the device mid-epoch."""
    from tqdm import tqdm

    optimizer, recipe = state.optimizer, state.recipe
    forward = state.forward if state.forward is not None else state.model
    state.model.train()
    loss_sum = torch.zeros((), device=state.device)
    correct = torch.zeros((), device=state.device, dtype=torch.long)
    seen = 0
    start = time.perf_counter()
    batches = tqdm(state.train_loader, desc=f"epoch {epoch + 1:2d}", leave=False, disable=not show_progress, unit="batch")
    for x, y in batches:
        with autocast(state.device, state.precision):
            logits = forward(x)
            loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(dim=1) == y).sum()
        seen += len(y)
    loss_value = float(loss_sum) / seen  # the one synchronisation of the epoch
    seconds = time.perf_counter() - start
    return loss_value, 100.0 * int(correct) / seen, seconds


def _emit(callbacks, event: str, *args) -> None:
    for cb in callbacks:
        handler = getattr(cb, event, None)
        if handler is not None:
            handler(*args)


class ConsolePrinter:
    """One line per epoch in the chapter's form, extended with train accuracy, lr, time and speed."""

    def __init__(self, log=print):
        self.log = log

    def on_train_start(self, state: TrainState) -> None:
        r = state.recipe
        self.log(f"training {r.model} ({count_parameters(state.model):,} parameters) with recipe '{r.name}' "
                 f"on {state.device} ({state.precision}), {len(state.train_loader.labels)} images, {r.epochs} epochs")

    def on_epoch_end(self, state: TrainState, row: dict) -> None:
        val = f"  val acc {row['val_acc']:.2f}%" if "val_acc" in row else ""
        self.log(f"epoch {row['epoch']:2d}  loss {row['train_loss']:.3f}  test acc {row['test_acc']:.2f}%  "
                 f"train acc {row['train_acc']:.2f}%{val}  lr {row['lr']:.4f}  {row['seconds']:.1f}s  "
                 f"{row['images_per_s']:.0f} img/s")

    def on_train_end(self, state: TrainState, summary: dict) -> None:
        where = f"; run folder {summary['run_dir']}" if summary["run_dir"] else ""
        if summary["stopped_early"]:
            self.log(f"stopped early after epoch {summary['epochs']}: val acc has not improved for "
                     f"{state.recipe.early_stop} epochs (best at epoch {summary['best_epoch']}, kept in best.pt)")
        self.log(f"final test acc {summary['final_test_acc']:.2f}% after {summary['epochs']} epochs in "
                 f"{summary['wall_seconds']:.0f}s (best {summary['best_metric']} {summary['best_value']:.2f}% "
                 f"at epoch {summary['best_epoch']}){where}")


class RunWriter:
    """Writes the run folder: config at the start, metrics and checkpoints every epoch, summary at the end."""

    def __init__(self, folder: RunFolder, data: Dataset, train_count: int, val_count: int):
        self.folder, self.data = folder, data
        self.train_count, self.val_count = train_count, val_count

    def on_train_start(self, state: TrainState) -> None:
        self.folder.write_config({
            "recipe": state.recipe.to_dict(),
            "data": {**self.data.summary(), "train_used": self.train_count, "val_held_out": self.val_count,
                     "mean": list(state.mean), "std": list(state.std)},
            "device": str(state.device),
            "precision": state.precision,
            "parameters": count_parameters(state.model),
            "versions": {"cnnlab": __version__, "torch": torch.__version__, "numpy": np.__version__,
                         "python": platform.python_version()},
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "threads": torch.get_num_threads()},
            "command": sys.argv,
        })

    def on_epoch_end(self, state: TrainState, row: dict) -> None:
        self.folder.write_metrics(state.rows)
        checkpoint = state.checkpoint()
        self.folder.save_checkpoint("last.pt", checkpoint)
        if state.best_epoch == row["epoch"]:
            self.folder.save_checkpoint("best.pt", checkpoint)

    def on_train_end(self, state: TrainState, summary: dict) -> None:
        note = None
        if summary["best_metric"] == "test_acc":
            note = "best.pt was chosen on test accuracy (no --val-split): an optimistic choice; report final_test_acc"
        self.folder.write_summary({**summary, **({"note": note} if note else {})})
