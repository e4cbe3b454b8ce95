"""How a run stops before its end: a signal (checkpoint, then Interrupted) or a loss that stopped being finite
(Diverged). Both carry what the CLI tells the user."""

from __future__ import annotations

import math
import signal
import threading
from pathlib import Path

from .errors import CnnlabError


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after a checkpoint was written; `cnnlab train --resume` continues it."""

    def __init__(self, signum: int, epoch: int, step: int, run_dir: Path | None):
        self.signum, self.epoch, self.step, self.run_dir = signum, epoch, step, run_dir
        where = f"epoch {epoch}, step {step}" if step else f"the end of epoch {epoch}"
        super().__init__(f"stopped by {signal.Signals(signum).name} at {where}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def stops_early(rows: list[dict], metric: str, patience: int, min_delta: float = 0.0, grace: int = 0) -> bool:
    """Whether early stopping ends the run after these epoch rows: `patience` epochs have passed since the
    metric last rose by more than `min_delta`, and the run is past its first `grace` epochs. Decided from
    the rows alone, so a resumed run decides as the uninterrupted one would."""
    if not patience or len(rows) <= grace:
        return False
    best, best_epoch = -math.inf, 0
    for row in rows:
        if row[metric] > best + (min_delta if best_epoch else 0.0):
            best, best_epoch = row[metric], row["epoch"]
    return rows[-1]["epoch"] - best_epoch >= patience


class Diverged(CnnlabError):
    def __init__(self, epoch: int, step: int, steps: int, lr: float, good_epoch: int, run_dir: Path | None):
        kept = (
            f"the last good checkpoint (epoch {good_epoch}) is kept in {run_dir / 'last.pt'}"
            if run_dir and good_epoch
            else "nothing was kept"
        )
        super().__init__(
            f"the training loss became NaN or infinite in epoch {epoch}, step {step} of {steps}, at learning "
            f"rate {lr:.4g}; {kept}. Try a lower lr, precision fp32, or a run with batch norm",
            parameters=("lr", "precision"),
        )


class StopOnSignal:
    """While training: the first SIGINT or SIGTERM asks the loop to stop after its current step
    (a second SIGINT stops at once). Only in the main thread, where Python can install handlers."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, state):  # a TrainState
        self.state, self.previous = state, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.state.progress.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.state.progress.stop_signal = signum

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False
