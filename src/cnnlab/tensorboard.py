"""TensorBoard scalars per epoch (optional: `pip install 'cnnlab[tensorboard]'`)."""

from __future__ import annotations

from pathlib import Path

from .errors import UsageError


def require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
    except ImportError:
        raise UsageError(
            "tensorboard needs the tensorboard package: pip install 'cnnlab[tensorboard]'", parameters=("tensorboard",)
        ) from None


class TensorBoardWriter:
    """A training callback: every number of a metrics row becomes a scalar, grouped as loss/, accuracy/, ..."""

    GROUPS = {"loss": "loss", "acc": "accuracy"}

    def __init__(self, log_dir: Path):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def on_epoch_end(self, state, row: dict) -> None:
        for key, value in row.items():
            if key == "epoch":
                continue
            split, _, kind = key.rpartition("_")
            tag = f"{self.GROUPS[kind]}/{split}" if kind in self.GROUPS and split else f"train/{key}"
            self.writer.add_scalar(tag, value, row["epoch"])
        self.writer.flush()

    def on_train_end(self, state, summary: dict) -> None:
        self.writer.close()
