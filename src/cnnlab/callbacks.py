"""The training loop's standard callbacks: the console line per epoch, and the run folder writer.

A callback may define on_train_start(state), on_epoch_end(state, row), on_interrupt(state) and
on_train_end(state, summary); the loop calls whichever exist, in order.
"""

from __future__ import annotations

import platform
import sys
import time

import numpy as np
import torch

from . import __version__
from .data import Dataset
from .device import cpu_description
from .models import count_parameters
from .runfiles import load_checkpoint, read_json
from .runs import RunFolder


class ConsolePrinter:
    """One line per epoch in the chapter's form, extended with train accuracy, lr, time and speed."""

    def __init__(self, log=print):
        self.log = log

    def on_train_start(self, state) -> None:
        r = state.recipe
        world = state.cluster.world_size
        ranks = f" x {world} processes (DDP, global batch {r.batch_size})" if world > 1 else ""
        self.log(
            f"training {r.model} ({count_parameters(state.net.model):,} parameters) with recipe '{r.name}' "
            f"on {state.device} ({state.precision}){ranks}, {len(state.train_loader.labels)} images, {r.epochs} epochs"
        )
        for note in state.notes:
            self.log(note)

    def on_epoch_end(self, state, row: dict) -> None:
        val = f"  val acc {row['val_acc']:.2f}%" if "val_acc" in row else ""
        val += f"  ema test acc {row['ema_test_acc']:.2f}%" if "ema_test_acc" in row else ""
        val += f"  tta test acc {row['tta_test_acc']:.2f}%" if "tta_test_acc" in row else ""
        self.log(
            f"epoch {row['epoch']:2d}  loss {row['train_loss']:.3f}  test acc {row['test_acc']:.2f}%  "
            f"train acc {row['train_acc']:.2f}%{val}  lr {row['lr']:.4f}  {row['seconds']:.1f}s  "
            f"{row['images_per_s']:.0f} img/s"
        )

    def on_train_end(self, state, summary: dict) -> None:
        where = f"; run folder {summary['run_dir']}" if summary["run_dir"] else ""
        if summary["stopped_early"]:
            self.log(
                f"stopped early after epoch {summary['epochs']}: val acc has not improved for "
                f"{state.recipe.early_stop} epochs (best at epoch {summary['best_epoch']}, kept in best.pt)"
            )
        tta = f" ({summary['final_tta_test_acc']:.2f}% with TTA)" if "final_tta_test_acc" in summary else ""
        reported = summary["reported"]
        reports = (
            f"; the run reports {reported['weights']}: test acc {reported['test_acc']:.2f}%"
            if reported["weights"].startswith("best")
            else ""
        )
        self.log(
            f"final test acc {summary['final_test_acc']:.2f}%{tta} after {summary['epochs']} epochs in "
            f"{summary['wall_seconds']:.0f}s (best {summary['best_metric']} {summary['best_value']:.2f}% "
            f"at epoch {summary['best_epoch']}{reports}){where}"
        )


class RunWriter:
    """Writes the run folder: config at the start, metrics and checkpoints every epoch, summary at the end."""

    def __init__(self, folder: RunFolder, data: Dataset, train_count: int, val_count: int, resumed: bool = False):
        self.folder, self.data = folder, data
        self.train_count, self.val_count = train_count, val_count
        self.resumed = resumed

    def on_train_start(self, state) -> None:
        if self.resumed:
            # The checkpoint is the truth: metrics rewritten from it (a kill may have come between the
            # two writes), best.pt re-saved if the kill came before it was, and the resume noted.
            self.folder.remove_stale_temporaries()
            self.folder.write_metrics(state.progress.rows)
            if (
                state.progress.best_epoch == state.progress.epoch
                and state.progress.partial is None
                and state.progress.rows
            ):
                best = self.folder.path / "best.pt"
                if not best.is_file() or load_checkpoint(best).get("epoch") != state.progress.epoch:
                    self.folder.save_checkpoint("best.pt", state.checkpoint())
            config_path = self.folder.path / "config.json"
            config = read_json(config_path)
            config.setdefault("resumed", []).append(
                {
                    "at_epoch": state.progress.epoch,
                    "at_step": state.train_loader.position,
                    "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "command": sys.argv,
                }
            )
            self.folder.write_config(config)
            return
        self.folder.write_config(
            {
                "recipe": state.recipe.to_dict(),
                "data": {
                    **self.data.summary(),
                    "train_used": self.train_count,
                    "val_held_out": self.val_count,
                    "mean": list(state.mean),
                    "std": list(state.std),
                },
                "device": str(state.device),
                "precision": state.precision,
                "threads": torch.get_num_threads(),
                "parameters": count_parameters(state.net.model),
                "versions": {
                    "cnnlab": __version__,
                    "torch": torch.__version__,
                    "numpy": np.__version__,
                    "python": platform.python_version(),
                },
                "machine": {
                    "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "cpu": cpu_description(),
                    "threads": torch.get_num_threads(),
                },
                "command": sys.argv,
                **({"weights": state.notes} if state.notes else {}),
            }
        )

    def on_epoch_end(self, state, row: dict) -> None:
        checkpoint = state.checkpoint()
        self.folder.save_checkpoint("last.pt", checkpoint)  # first: resuming trusts it over the metrics files
        if state.progress.best_epoch == row["epoch"]:
            self.folder.save_checkpoint("best.pt", checkpoint)
        if state.net.ema is not None:
            self.folder.save_checkpoint("ema.pt", state.ema_checkpoint())
        self.folder.write_metrics(state.progress.rows)

    def on_interrupt(self, state) -> None:
        self.folder.save_checkpoint("last.pt", state.checkpoint())

    def on_train_end(self, state, summary: dict) -> None:
        note = None
        if summary["best_metric"] == "test_acc":
            note = "best.pt was chosen on test accuracy (no --val-split): an optimistic choice; report final_test_acc"
        self.folder.write_summary({**summary, **({"note": note} if note else {})})
