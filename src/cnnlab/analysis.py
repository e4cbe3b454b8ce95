"""What the diagnostics read: a run folder's records, and its final model's predictions on the test split.

Plots, `diagnose`, `confusion` and `report` start here; none of them touches the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CnnlabError


@dataclass
class RunRecord:
    """The files of one run folder, read once."""

    path: Path
    config: dict
    rows: list[dict]
    summary: dict  # empty while the run is still training

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def eval_split(self) -> str:
        """The split the curves judge generalisation on: validation when held out, else test."""
        return "val" if self.rows and "val_acc" in self.rows[0] else "test"


def read_run(path: str | Path) -> RunRecord:
    from .runfiles import read_json, read_metrics

    path = Path(path)
    if not path.is_dir():
        raise CnnlabError(f"{path}: no such run folder; pass a folder written by 'cnnlab train'")
    rows = read_metrics(path)
    if not rows:
        raise CnnlabError(f"{path} has no finished epoch yet; wait for the first epoch to end")
    config = read_json(path / "config.json")
    summary = read_json(path / "summary.json") if (path / "summary.json").exists() else {}
    return RunRecord(path, config, rows, summary)


@dataclass
class Predictions:
    """A model's decisions on every test image, with the images themselves for galleries."""

    classes: list[str]
    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # [N]
    probabilities: torch.Tensor  # [N, C]

    @property
    def predictions(self) -> torch.Tensor:
        return self.probabilities.argmax(dim=1)

    @property
    def confidence(self) -> torch.Tensor:
        return self.probabilities.max(dim=1).values

    @property
    def accuracy(self) -> float:
        return 100.0 * float((self.predictions == self.labels).double().mean())

    def confusion(self) -> torch.Tensor:
        from .evaluate import confusion_matrix

        return confusion_matrix(self.predictions, self.labels, len(self.classes))

    def per_class_accuracy(self) -> list[float]:
        from .evaluate import per_class_accuracy

        return per_class_accuracy(self.predictions, self.labels, len(self.classes))

    def most_confident_errors(self, count: int) -> torch.Tensor:
        """Indices of wrong predictions, most confident first (fastai's 'top losses', by confidence)."""
        wrong = (self.predictions != self.labels).nonzero().flatten()
        order = self.confidence[wrong].argsort(descending=True)
        return wrong[order][:count]


def predict_test_split(model: torch.nn.Module, data, mean, std, device: torch.device | str = "cpu") -> Predictions:
    """Float32 probabilities of `model` on `data`'s test split, normalised as in training."""
    from .evaluate import EVAL_BATCH_SIZE, evaluate
    from .loader import Loader, Normalizer

    loader = Loader(
        data.test_images, data.test_labels, EVAL_BATCH_SIZE, Normalizer(tuple(mean), tuple(std)), device=device
    )
    result = evaluate(model, loader)
    return Predictions(list(data.classes), data.test_images, data.test_labels, result["probabilities"])
