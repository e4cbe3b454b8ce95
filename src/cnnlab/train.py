"""The training loop.

Read top to bottom: `train` prepares the run (prepare.py: split, statistics, model, optimizer,
loaders), then for each epoch sets the learning rate, trains (epoch.py: `train_one_epoch`, one `train_step`
per batch), evaluates, and hands the epoch's row to the callbacks. The loop knows nothing about files or
plots: `RunWriter` and `ConsolePrinter` (callbacks.py) are callbacks like any other, and so are the
figures and TensorBoard.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import distributed
from .callbacks import ConsolePrinter, RunWriter
from .data import Dataset, load_dataset
from .device import autocast
from .distributed import Cluster
from .epoch import train_one_epoch
from .errors import CnnlabError
from .evaluate import evaluate
from .metrics import calibration_fields, classification_metrics, expected_calibration_error
from .models import count_parameters
from .names import shown
from .openrun import reported_weights
from .prepare import prepare
from .recipe import Recipe
from .runfiles import load_checkpoint, recorded_labels, recorded_source, resolve_checkpoint
from .runs import RunFolder, RunLock, claim_run_folder
from .schedule import learning_rate, set_learning_rate
from .state import RESUME_FIELDS, TrainState
from .stopping import Interrupted, StopOnSignal, stops_early


@dataclass
class TrainResult:
    run_dir: Path | None
    rows: list[dict]
    summary: dict
    model: torch.nn.Module


def train(
    recipe: Recipe,
    data: Dataset | str = "cifar10",
    *,
    data_root: str | Path = "data",
    runs_dir: str | Path | None = "runs",
    name: str | None = None,
    progress: bool = True,
    callbacks: list | None = None,
    log=None,
    plots: bool = True,
    tensorboard: bool = False,
    resume_from: dict | None = None,
    cluster: Cluster | None = None,
) -> TrainResult:
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
        result = _train(
            recipe,
            data,
            data_root,
            runs_dir,
            name,
            progress,
            callbacks,
            log,
            plots,
            tensorboard,
            resume_from,
            cluster,
            started,
        )
        finished = True
        return result
    except RuntimeError as e:
        if cluster.distributed and distributed.is_peer_failure(e):
            raise distributed.PeerLost(cluster, runs_dir) from None
        raise
    finally:
        if started_here:
            distributed.stop(cluster, finished)


def _train(
    recipe,
    data,
    data_root,
    runs_dir,
    name,
    progress,
    callbacks,
    log,
    plots,
    tensorboard,
    resume_from,
    cluster: Cluster,
    started: float,
) -> TrainResult:
    if not cluster.is_main:  # the other ranks train and stay quiet
        runs_dir, progress, plots, tensorboard, callbacks = None, False, False, False, []
    if tensorboard and runs_dir is not None:
        from .tensorboard import require_tensorboard

        require_tensorboard()  # before any time is spent
    if not isinstance(data, Dataset):
        data = load_dataset(data, root=data_root, image_size=recipe.image_size, progress=progress)
    setup = prepare(recipe, data, cluster, fresh=resume_from is None)
    state = setup.state
    if resume_from is not None:
        state.restore(resume_from)
    setup_seconds = time.perf_counter() - started
    callbacks = list(callbacks or [])
    if progress:
        callbacks.insert(0, ConsolePrinter(log or (lambda line: print(line, flush=True))))
    run_dir = lock = None
    if runs_dir is not None:
        run_dir = (
            claim_run_folder(runs_dir, name, stem=f"{recipe.name}-{recipe.model}")
            if resume_from is None
            else Path(runs_dir) / name
        )
        lock = RunLock(run_dir)  # one process per run folder, also across --resume
        callbacks += _folder_callbacks(run_dir, data, setup, resume_from is not None, plots, tensorboard)
    try:
        with StopOnSignal(state):
            _emit(callbacks, "on_train_start", state)
            last_test = _loop(state, setup.eval_loaders, callbacks, progress, setup.train_count, run_dir)
    except CnnlabError:
        if run_dir is not None and resume_from is None and state.progress.epoch == 0:
            shutil.rmtree(run_dir, ignore_errors=True)  # failed before its first checkpoint: nothing worth keeping
        raise
    finally:
        if lock is not None:
            lock.release()
    summary = _summary(state, time.perf_counter() - started, setup_seconds, run_dir)
    summary["test_metrics"] = final_test_metrics(state, setup.eval_loaders["test"], data.classes, last_test)
    _emit(callbacks, "on_train_end", state, summary)
    return TrainResult(run_dir, state.progress.rows, summary, state.net.model)


def _folder_callbacks(run_dir: Path, data: Dataset, setup, resumed: bool, plots: bool, tensorboard: bool) -> list:
    """What writes the run folder: its files every epoch, and at the end its figures (and TensorBoard's)."""
    callbacks = [
        RunWriter(RunFolder(run_dir), data, train_count=setup.train_count, val_count=setup.val_count, resumed=resumed)
    ]
    if plots:
        from .plots import PlotWriter

        callbacks.append(PlotWriter(run_dir, data))
    if tensorboard:
        from .tensorboard import TensorBoardWriter

        callbacks.append(TensorBoardWriter(run_dir / "tensorboard"))
    return callbacks


def _summary(state: TrainState, wall_seconds: float, setup_seconds: float, run_dir: Path | None) -> dict:
    """What summary.json holds. Wall time = setup (data, model, optimizer, loaders; a resume's restore) +
    training + evaluation + what the callbacks take (checkpoints, figures)."""
    p, last = state.progress, state.progress.rows[-1]
    summary = {
        "epochs": p.epoch,
        "epochs_planned": state.recipe.epochs,
        "stopped_early": p.stopped_early,
        "final_test_acc": last["test_acc"],
        "final_train_acc": last["train_acc"],
        "best_epoch": p.best_epoch,
        "best_metric": p.best_metric,
        "best_value": p.best_value,
        "wall_seconds": wall_seconds,
        "train_seconds": sum(r["seconds"] for r in p.rows),
        "eval_seconds": sum(r.get("eval_seconds", 0.0) for r in p.rows),
        "setup_seconds": setup_seconds,
        "device": str(state.device),
        "precision": state.precision,
        "parameters": count_parameters(state.net.model),
        "run_dir": str(run_dir) if run_dir else None,
        "world_size": state.cluster.world_size,
    }
    reported = reported_weights(p.best_metric, p.best_epoch, p.epoch)
    summary["reported"] = {"weights": reported.describe(), "test_acc": p.rows[reported.epoch - 1]["test_acc"]}
    if "val_acc" in last:
        summary["final_val_acc"] = last["val_acc"]
    if "tta_test_acc" in last:
        summary["final_tta_test_acc"] = last["tta_test_acc"]
    return summary


def resume(run_dir: str | Path, data: Dataset | str | None = None, **options) -> TrainResult:
    """Continue a stopped or killed run from its last.pt, with the run's own recipe and data.

    The result equals an uninterrupted run's: every generator, the optimizer, the history and the
    early-stopping state come from the checkpoint, and an epoch stopped mid-way resumes at its step.
    """
    from .recipe_files import as_the_run_trained, recipe_from_dict

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
        raise CnnlabError(
            f"{shown(run_dir / 'last.pt')} cannot be resumed (its '{missing[0]}' is missing or damaged); "
            "start the run again"
        )
    recipe = recipe_from_dict(as_the_run_trained(checkpoint["recipe"]), where=f"{run_dir}/last.pt")
    if data is None:
        labels = recorded_labels(run_dir)
        data = recorded_source(run_dir)
        if labels:  # a labelled source is loaded here: train() takes a source or a Dataset
            data = load_dataset(
                data, image_size=recipe.image_size, progress=options.get("progress", True), labels=labels
            )
    return train(recipe, data, runs_dir=run_dir.parent, name=run_dir.name, resume_from=checkpoint, **options)


def _loop(
    state: TrainState, eval_loaders: dict, callbacks: list, progress: bool, train_count: int, run_dir: Path | None
) -> dict | None:
    """The epochs: set the rate, train, evaluate, hand the row to the callbacks; stop early or on a signal.
    Returns the last epoch's float32 test result (None if no epoch ran), which the final metrics reuse."""
    recipe, p = state.recipe, state.progress
    test_result = None
    for epoch in range(p.epoch, recipe.epochs):
        lr = learning_rate(
            recipe, epoch, 0, len(state.train_loader)
        )  # the epoch's rate (per-step schedules set each step)
        set_learning_rate(state.optimizer, lr, epoch)
        cut_short = True  # a signal that came before the epoch began leaves nothing to train
        if p.stop_signal is None:
            train_loss, train_acc, seconds, seen = train_one_epoch(
                state, progress and sys.stderr.isatty(), epoch, run_dir
            )
            cut_short = p.partial is not None
        if cut_short:  # mid-epoch: the sums so far are in progress.partial, the loader keeps its position
            _gather_rank_states(state)
            _emit(callbacks, "on_interrupt", state)
            raise Interrupted(p.stop_signal, epoch + 1, state.train_loader.position, run_dir)
        evaluating = time.perf_counter()
        held_out, test_result = evaluate_epoch(state, eval_loaders, epoch)  # ends in a read of the results
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "train_images": seen,
            **held_out,
            "seconds": seconds,
            "eval_seconds": time.perf_counter() - evaluating,
            "images_per_s": train_count / seconds,
        }
        p.epoch = epoch + 1
        p.rows.append(row)
        if row[p.best_metric] > p.best_value:
            p.best_value, p.best_epoch = row[p.best_metric], epoch + 1
        _gather_rank_states(state)
        _emit(callbacks, "on_epoch_end", state, row)
        if p.best_metric != "test_acc" and stops_early(
            p.rows, p.best_metric, recipe.early_stop, recipe.early_stop_min_delta, recipe.early_stop_grace
        ):
            p.stopped_early = True  # no better validation metric for `early_stop` epochs: best.pt holds the winner
            break
        # A signal that came during the epoch's last step or its evaluation: the epoch is whole, its
        # checkpoint is written, so stop here (stopping before the row would train this epoch twice on resume).
        if state.cluster.anyone(p.stop_signal is not None):
            raise Interrupted(p.stop_signal or signal.SIGTERM, epoch + 1, 0, run_dir)
    return test_result


def final_test_metrics(state: TrainState, test_loader, classes: list[str], result: dict | None = None) -> dict:
    """Precision, recall, F1, balanced and top-5 accuracy and ECE of the final weights on the test split,
    in float32; with a validation split also the ECE after its fitted temperature. `result`: the final
    weights' float32 test result if the last epoch's row already took it (one pass over the split, not two)."""
    if result is None:
        with autocast(state.device, "fp32"):
            result = evaluate(state.net.forward, test_loader)
    metrics = classification_metrics(result["logits"], result["labels"], classes)
    temperature = state.progress.rows[-1].get("temperature")
    if temperature is not None:
        metrics["temperature"] = temperature
        metrics["ece_calibrated"] = expected_calibration_error(result["logits"] / temperature, result["labels"])
    return metrics


def evaluate_epoch(state: TrainState, eval_loaders: dict, epoch: int) -> tuple[dict, dict | None]:
    """The held-out numbers of an epoch's row, and the test split's result if it was judged in float32 (else
    None). The row: loss and accuracy per split (and the EMA's), with a validation split its fitted temperature
    and ECE, and on the last epoch the test split over the TTA views when the recipe asks. A point on the learning
    curve may be judged in the training precision; a result, or a row that selects a model on a validation
    split (best.pt, early stopping), is judged in float32."""
    recipe, net, row, results = state.recipe, state.net, {}, {}
    curve_only = recipe.eval_precision == "auto" and epoch + 1 < recipe.epochs and "val" not in eval_loaders
    with autocast(state.device, state.precision if curve_only else "fp32"):
        for split, loader in sorted(eval_loaders.items(), key=lambda kv: kv[0] != "val"):
            result = results[split] = evaluate(net.forward, loader)
            row[f"{split}_loss"], row[f"{split}_acc"] = result["loss"], result["acc"]
            if split == "val":  # what best.pt may be chosen on, and the temperature fitted on held-out images
                chosen = classification_metrics(result["logits"], result["labels"], state.classes)
                row["val_balanced_acc"], row["val_macro_f1"] = chosen["balanced_acc"], chosen["macro"]["f1"]
                row.update(calibration_fields(result["logits"], result["labels"]))
            if net.ema is not None:
                row[f"ema_{split}_acc"] = evaluate(net.ema.module, loader)["acc"]
    if recipe.tta and epoch + 1 == recipe.epochs:  # the final model, also judged over the recipe's TTA views
        # The image as it is was judged just above, in float32 (a last row always is): that view reuses those
        # logits, one pass of the test split fewer (a sixth of the diagonals' time), and never less precise.
        with autocast(state.device, state.precision if recipe.tta_precision == "auto" else "fp32"):
            tta = evaluate(net.forward, eval_loaders["test"], True, recipe.tta_views, plain=results["test"])
        row["tta_test_acc"], row["tta_test_loss"] = tta["acc"], tta["loss"]
    return row, None if curve_only else results["test"]


def _gather_rank_states(state: TrainState) -> None:
    """Under DDP each rank's loader (its augmentation stream) and partial sums differ: rank 0 keeps them all."""
    if state.cluster.distributed:
        state.rank_states = state.cluster.gather(
            {"loader": state.train_loader.state_dict(), "partial": state.progress.partial}
        )


def _emit(callbacks, event: str, *args) -> None:
    for cb in callbacks:
        handler = getattr(cb, event, None)
        if handler is not None:
            handler(*args)
