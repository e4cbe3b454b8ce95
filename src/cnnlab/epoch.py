"""One pass over the training images: `train_one_epoch`, one `train_step` per batch, with the sums of loss
and accuracy kept on the device and read once, a stop on a signal between two steps, and the stop
decided together by every rank under DDP."""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .augment import mix
from .device import autocast
from .schedule import learning_rate, set_learning_rate
from .state import TrainState
from .stopping import Diverged

CHECK_EVERY = 25  # steps between finiteness reads on accelerators (each read waits for the device)


def train_one_epoch(
    state: TrainState,
    show_progress: bool,
    epoch: int,
    run_dir: Path | None = None,
) -> tuple[float, float, float, int]:
    """One pass over the training loader: (mean loss, accuracy, seconds, images seen by every rank together).

    Loss and accuracy are summed on the device and read once at the end, so the loop never waits on the
    device mid-epoch (finiteness is checked on the device too, and read every step on the CPU, where
    reading is free, else every CHECK_EVERY steps). A signal ends the pass after the current step with the
    sums kept in progress.partial; a pass resumed from such a checkpoint starts from those sums and the
    loader's saved position.
    """
    from tqdm import tqdm

    p, loader = state.progress, state.train_loader
    state.net.model.train()
    partial = p.partial or {}
    loss_sum = torch.as_tensor(partial.get("loss_sum", 0.0), device=state.device, dtype=torch.float32).clone()
    correct = torch.as_tensor(partial.get("correct", 0), device=state.device, dtype=torch.long).clone()
    seen, seconds_before = partial.get("seen", 0), partial.get("seconds", 0.0)
    finite = torch.ones((), device=state.device, dtype=torch.bool)
    check_every = 1 if state.device.type == "cpu" else CHECK_EVERY
    start = time.perf_counter()
    batches = tqdm(
        loader,
        desc=f"epoch {epoch + 1:2d}",
        leave=False,
        disable=not show_progress,
        unit="batch",
        initial=loader.position,
        total=len(loader),
    )
    for step, (x, y) in enumerate(batches, start=loader.position + 1):
        loss, hits = train_step(state, x, y, epoch, step)
        finite &= torch.isfinite(loss)
        if step % check_every == 0 and not bool(finite):
            raise Diverged(epoch + 1, step, len(loader), state.optimizer.param_groups[-1]["lr"], p.epoch, run_dir)
        loss_sum += loss * len(y)
        correct += hits
        seen += len(y)
        if _stopping(state, step, check_every) and step < len(loader):
            p.partial = {
                "loss_sum": loss_sum.cpu(),
                "correct": correct.cpu(),
                "seen": seen,
                "seconds": seconds_before + time.perf_counter() - start,
            }
            batches.close()
            return math.nan, math.nan, math.nan, seen
    if not bool(finite):
        raise Diverged(epoch + 1, len(loader), len(loader), state.optimizer.param_groups[-1]["lr"], p.epoch, run_dir)
    p.partial = None
    if state.net.lookahead is not None and epoch + 1 == state.recipe.epochs:
        state.net.lookahead.finish(state.net.model)
    loss_sum, correct, seen = _epoch_totals(state, loss_sum, correct, seen)
    seconds = seconds_before + time.perf_counter() - start
    return float(loss_sum) / seen, 100.0 * int(correct) / seen, seconds, seen  # the one synchronisation of the epoch


def train_step(
    state: TrainState, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One gradient step on batch (x, y), the `step`-th (1-based) of `epoch`: (its loss, its correct count),
    both still on the device."""
    recipe, net, optimizer, steps = state.recipe, state.net, state.optimizer, len(state.train_loader)
    if recipe.schedule in ("onecycle", "linear") or recipe.warmup_epochs > 0:  # the rate changes every step
        set_learning_rate(optimizer, learning_rate(recipe, epoch, step - 1, steps), epoch + (step - 1) / steps)
    mixing = recipe.mixup > 0 or recipe.cutmix > 0
    if mixing:
        x, y, y_partner, weight = mix(x, y, recipe.mixup, recipe.cutmix)
    with autocast(state.device, state.precision):
        logits = net.trainer(x)
        # With class weights, cross_entropy's mean is over the batch's weights, so the loss keeps its scale.
        loss = F.cross_entropy(logits, y, weight=state.class_weight, label_smoothing=recipe.label_smoothing)
        if mixing:
            loss = weight * loss + (1 - weight) * F.cross_entropy(
                logits, y_partner, weight=state.class_weight, label_smoothing=recipe.label_smoothing
            )
    optimizer.zero_grad(set_to_none=True)
    if net.scaler is not None:  # fp16: scale the loss so small gradients survive, unscale before the step
        net.scaler.scale(loss).backward()
        net.scaler.step(optimizer)
        net.scaler.update()
    else:
        loss.backward()
        optimizer.step()
    if net.ema is not None:
        net.ema.update_parameters(net.model)
    if net.lookahead is not None:
        net.lookahead.after_step(net.model, epoch * steps + step, recipe.epochs * steps)
    return loss.detach(), (logits.argmax(dim=1) == y).sum()


def _stopping(state: TrainState, step: int, check_every: int) -> bool:
    """Whether a signal asks this step to be the last; under DDP every rank stops at the same step, or none."""
    p, cluster = state.progress, state.cluster
    stopping = p.stop_signal is not None
    if cluster.distributed:  # decided together
        stopping = step % check_every == 0 and cluster.anyone(stopping)
        if stopping and p.stop_signal is None:
            p.stop_signal = signal.SIGTERM  # a peer was told to stop
    return stopping


def _epoch_totals(state: TrainState, loss_sum, correct, seen: int):
    """The epoch's sums over every rank's images; rank 0's running statistics for all."""
    cluster = state.cluster
    if not cluster.distributed:
        return loss_sum, correct, seen
    cluster.broadcast_buffers(state.net.model)
    totals = cluster.all_sum(
        torch.stack(
            [
                loss_sum.double(),
                correct.double(),
                torch.tensor(float(seen), device=loss_sum.device, dtype=torch.float64),
            ]
        )
    )
    return totals[0], totals[1], int(totals[2])
