"""One way to open a trained run: `load_run(path, weights="auto")`, for every command and for notebooks.

    run = cnnlab.load_run("runs/seed-smallcnn-20261201-101500")
    run.weights.describe()                  # 'best.pt (epoch 19, chosen on val_acc)' or 'last.pt (epoch 30)'
    run.predict(["cat.jpg", pil_image, uint8_array])   # what `cnnlab predict` answers, same preprocessing
    run.evaluate()                          # what `cnnlab evaluate --json` prints

Which weights: `last` is the trained run as it ended, and what the run reports. `best` is best.pt,
which a run chooses on its validation split (without one it would be chosen on the test split:
optimistic). The default, `auto`, is the same everywhere: best.pt when it was chosen on a validation
split, else last.pt. `ema` is the moving average of the weights, when the recipe kept one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CnnlabError, UsageError
from .loader import Normalizer
from .names import shown
from .runfiles import load_checkpoint, model_from_checkpoint, read_json, recorded_labels, recorded_source

WEIGHTS = ("auto", "best", "last", "ema")


@dataclass(frozen=True)
class Weights:
    """Which checkpoint a model came from, in words every output repeats."""

    file: Path
    epoch: int
    chosen_on: str | None = None  # the metric best.pt was chosen on

    def describe(self) -> str:
        chosen = f", chosen on {self.chosen_on}" if self.chosen_on else ""
        return f"{self.file.name} (epoch {self.epoch}{chosen})"

    def to_dict(self) -> dict:
        return {"file": str(self.file), "epoch": self.epoch, "chosen_on": self.chosen_on, "described": self.describe()}


def reported_weights(best_metric: str, best_epoch: int, last_epoch: int) -> Weights:
    """The weights a run reports by default: best.pt when it was chosen on a validation split, else the last."""
    if best_metric.startswith("val_"):
        return Weights(Path("best.pt"), best_epoch, best_metric)
    return Weights(Path("last.pt"), last_epoch)


def weights_file(folder: Path, which: str = "auto") -> Path:
    """The checkpoint of run `folder` that `which` (auto, best, last, ema) names."""
    if which not in WEIGHTS:
        raise UsageError(f"weights {which!r}: choose one of {', '.join(WEIGHTS)}", parameters=("weights",))
    if which == "auto":
        if not (folder / "config.json").exists() and not any(folder.glob("*.pt")):
            raise CnnlabError(f"{shown(folder)} has no best.pt or last.pt; is it a cnnlab run folder?")
        config = read_json(folder / "config.json") if (folder / "config.json").exists() else {}
        held_out = config.get("data", {}).get("val_held_out", 0) if isinstance(config.get("data"), dict) else 0
        which = "best" if isinstance(held_out, int) and held_out > 0 and (folder / "best.pt").exists() else "last"
    path = folder / f"{which}.pt"
    if not path.exists():
        having = sorted(p.stem for p in folder.glob("*.pt") if p.stem in WEIGHTS)
        raise CnnlabError(
            f"{shown(folder)} has no {path.name}"
            + (f" (it has {', '.join(having)})" if having else "; is it a cnnlab run folder?")
        )
    return path


@dataclass
class Run:
    """A trained model with everything needed to use it as it was trained."""

    folder: Path | None  # the run folder; None for a checkpoint file outside one
    checkpoint: dict  # the loaded, checked checkpoint (runfiles.load_checkpoint)
    weights: Weights
    model: torch.nn.Module  # in eval mode
    normalizer: Normalizer

    @property
    def classes(self) -> list[str]:
        return list(self.checkpoint["classes"])

    @property
    def image_size(self) -> int:
        return self.checkpoint["image_size"]

    @property
    def recipe(self):
        from .recipe_files import as_the_run_trained, recipe_from_dict

        saved = self.checkpoint.get("recipe")
        if not isinstance(saved, dict):
            return None
        return recipe_from_dict(as_the_run_trained(saved), where=str(self.weights.file))

    @property
    def source(self) -> str | None:
        """The data the run was trained on, as its config.json records it."""
        return recorded_source(self.folder) if self.folder is not None else None

    @property
    def grayscale(self) -> bool:
        """Whether the run's data was all grey, as its config.json records (False when it does not say)."""
        if self.folder is None or not (self.folder / "config.json").is_file():
            return False
        data = read_json(self.folder / "config.json").get("data")
        return isinstance(data, dict) and data.get("grayscale") is True

    @property
    def labels_file(self) -> str | None:
        """The labels file the run's data came with (labelfile.py), if any."""
        return recorded_labels(self.folder) if self.folder is not None else None

    @property
    def temperature(self) -> float:
        """The softmax temperature fitted on the validation split at these weights' epoch (metrics.fit_temperature),
        which predict, evaluate's calibrated ECE and exported probabilities divide the logits by; 1.0 (raw
        probabilities) for a run without a validation split and for the EMA weights, which it was not fitted on."""
        fitted = self.fitted_temperature
        return 1.0 if fitted is None else fitted

    @property
    def fitted_temperature(self) -> float | None:
        """The temperature of these weights' epoch row, or None when none was fitted for them."""
        if self.weights.file.name == "ema.pt":
            return None
        rows = self.checkpoint.get("rows")
        row = rows[self.weights.epoch - 1] if isinstance(rows, list) and 0 < self.weights.epoch <= len(rows) else {}
        value = row.get("temperature") if isinstance(row, dict) else None
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else None

    def __repr__(self) -> str:
        return f"Run({str(self.folder or self.weights.file)!r}, {self.checkpoint['model']}, {self.weights.describe()})"

    def dataset(self, data=None, image_size: int | None = None, **load_options):
        """The data to judge the model on: `data` (a Dataset or a source) or the run's own; its classes
        must be the model's."""
        from .data import Dataset, load_dataset

        if not isinstance(data, Dataset):
            source = data if data is not None else self.source
            if source is None:
                raise CnnlabError(
                    f"{shown(self.weights.file)} is outside a run folder, so it does not say its data; "
                    "pass the data (--data)"
                )
            if data is None and self.labels_file:
                load_options.setdefault("labels", self.labels_file)
            data = load_dataset(source, image_size=image_size or self.image_size, progress=False, **load_options)
        if list(data.classes) != self.classes:
            raise CnnlabError(
                f"{shown(self.weights.file)} was trained on classes {self.classes}, but {shown(data.source)} "
                f"has {data.classes}; use the data the model was trained for"
            )
        return data

    def to(self, device) -> Run:
        self.model = self.model.to(device)
        return self

    def predict(self, images, top_k: int = 3, tta: bool = False, min_confidence: float | None = None) -> list:
        """Top-k (class, probability) per image, as `cnnlab predict` gives them: file paths, PIL images,
        uint8 arrays [H, W, 3] or [H, W], or a uint8 tensor [N, 3, H, W]; one Prediction each, in order.
        Probabilities are calibrated by the run's temperature; below `min_confidence` the answer is 'unknown'."""
        from .predict import predict_any

        return predict_any(self, images, top_k=top_k, tta=tta, min_confidence=min_confidence)

    def evaluate(self, data=None, tta: bool = False, exclude_duplicates=None, exclude_label_issues=None) -> dict:
        """What `cnnlab evaluate --json` prints: accuracy and loss on the test split, per class, with the
        weights used; with `exclude_duplicates` (a leak audit folder), also without the leaked test images;
        with `exclude_label_issues` (a label audit folder), also without the likely mislabelled ones."""
        from .evaluate import evaluation_report

        return evaluation_report(
            self, self.dataset(data), tta=tta, audit=exclude_duplicates, label_audit=exclude_label_issues
        )

    def test_predictions(self, data=None):
        """analysis.Predictions of this model on the test split of `data` (default: the run's own)."""
        from .analysis import predict_test_split

        data = self.dataset(data)
        device = next(self.model.parameters()).device
        return predict_test_split(self.model, data, self.checkpoint["mean"], self.checkpoint["std"], device)

    def record(self):
        """The run folder's records (config, metric rows, summary): analysis.RunRecord."""
        from .analysis import read_run

        if self.folder is None:
            raise CnnlabError(f"{shown(self.weights.file)} is outside a run folder: it has no curves or records")
        return read_run(self.folder)


def load_run(path: str | Path, weights: str = "auto", device: str | torch.device = "cpu") -> Run:
    """Open a run folder (its `weights`: auto, best, last or ema) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        folder, file = path, weights_file(path, weights)
    elif path.exists():
        folder, file = (path.parent if (path.parent / "config.json").exists() else None), path
    else:
        raise CnnlabError(f"{shown(path)}: no such run folder or checkpoint file")
    checkpoint = load_checkpoint(file)
    best = checkpoint.get("best") if isinstance(checkpoint.get("best"), dict) else {}
    chosen_on = best.get("metric") if file.name == "best.pt" and isinstance(best.get("metric"), str) else None
    model = model_from_checkpoint(checkpoint, file).to(device).eval()
    normalizer = Normalizer(tuple(checkpoint["mean"]), tuple(checkpoint["std"]))
    return Run(folder, checkpoint, Weights(file, checkpoint["epoch"], chosen_on), model, normalizer)
