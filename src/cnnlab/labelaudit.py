"""Label audit: the images most likely labelled wrong, by confident learning (Northcutt, Jiang & Chuang,
2021, "Confident Learning: Estimating Uncertainty in Dataset Labels").

It needs out-of-sample predicted probabilities: each image's from a model that never trained on it.

- The test split: a trained run's predictions, or the mean of several runs' (`from_runs`).
- The training split: k-fold cross-validation (`cross_validated`): K models, each trained with a recipe
  on the other K-1 folds, predict the fold they did not see.

Confident learning gives each class j a threshold t_j: the mean predicted probability of j over the
images labelled j (how sure the model is, on average, of that class's own images). An image counts
confidently as class j when p_j >= t_j, and as the most probable of those classes when there are
several. Counting images by (given label, confident class) makes the "confident joint"; the images off
its diagonal, confidently another class than the one they were given, are the label issues. They are
ranked by self-confidence, the probability of the given label, lowest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .data import Dataset
from .errors import CnnlabError


@dataclass
class LabelAudit:
    split: str  # the split whose labels were audited: test or train
    source: str  # what gave the probabilities: a run folder, or "k-fold cross-validation (...)"
    labels: torch.Tensor  # [N] given labels
    probabilities: torch.Tensor  # [N, C] out of sample
    thresholds: torch.Tensor  # [C] per-class self-confidence threshold
    suggested: torch.Tensor  # [N] the class each image confidently is (its most probable where none)
    issues: torch.Tensor  # indices of the flagged images, most likely wrong first
    confident_joint: torch.Tensor  # [C, C] images counted by (given label, confident class)


def confident_learning(probabilities: torch.Tensor, labels: torch.Tensor) -> dict:
    """Per-class thresholds, each image's confident class, the confident joint and the ranked issues."""
    probabilities, labels = probabilities.double(), labels.long()
    if not torch.isfinite(probabilities).all():
        raise CnnlabError("the predicted probabilities are not all finite; retrain the model that made them")
    classes = probabilities.shape[1]
    counts = torch.bincount(labels, minlength=classes)
    sums = torch.zeros(classes, classes, dtype=torch.double).index_add_(0, labels, probabilities)
    # A class with no images in the split has no threshold: no image counts confidently as it.
    thresholds = torch.where(counts > 0, sums.diagonal() / counts.clamp_min(1), torch.inf)
    above = probabilities >= thresholds
    confident = above.any(dim=1)
    suggested = probabilities.masked_fill(~above, -1.0).argmax(dim=1)
    suggested = torch.where(confident, suggested, probabilities.argmax(dim=1))
    pair = labels[confident] * classes + suggested[confident]
    joint = torch.bincount(pair, minlength=classes * classes).view(classes, classes)
    flagged = (confident & (suggested != labels)).nonzero().flatten()
    self_confidence = probabilities[flagged, labels[flagged]]
    # Ties (equal self-confidence) fall back to the image's index, so the ranking is deterministic.
    order = sorted(range(len(flagged)), key=lambda k: (float(self_confidence[k]), int(flagged[k])))
    return {"thresholds": thresholds.float(), "suggested": suggested, "joint": joint, "issues": flagged[order]}


def find_label_issues(probabilities: torch.Tensor, labels: torch.Tensor, split: str, source: str) -> LabelAudit:
    found = confident_learning(probabilities, labels)
    return LabelAudit(
        split=split,
        source=source,
        labels=labels,
        probabilities=probabilities.float(),
        thresholds=found["thresholds"],
        suggested=found["suggested"],
        issues=found["issues"],
        confident_joint=found["joint"],
    )


def from_runs(runs: list, data: Dataset) -> LabelAudit:
    """Audit the test split's labels with the mean predicted probabilities of trained runs (openrun.Run),
    out of sample because no run trains on the test split. Several runs (seeds) average away some of
    each model's own mistakes, so fewer correct labels are flagged."""
    probabilities = None
    for run in runs:
        predictions = run.test_predictions(run.dataset(data))
        p = predictions.probabilities
        probabilities = p if probabilities is None else probabilities + p
    names = ", ".join(str(run.folder or run.weights.file) for run in runs)
    return find_label_issues(probabilities / len(runs), predictions.labels, "test", names)


def fold_dataset(data: Dataset, held_out: torch.Tensor, fold: int, folds: int) -> Dataset:
    """The training split without `held_out`, with `held_out` as its test split: one fold's data."""
    keep = torch.ones(len(data.train_labels), dtype=torch.bool)
    keep[held_out] = False
    files = data.train_files
    return Dataset(
        source=f"{data.source} (fold {fold + 1} of {folds})",
        classes=list(data.classes),
        train_images=data.train_images[keep],
        train_labels=data.train_labels[keep],
        test_images=data.train_images[held_out],
        test_labels=data.train_labels[held_out],
        # A fold's runs must not pass for runs on the whole data (resume and evaluate check the checksum).
        checksum=f"{data.checksum}-fold{fold + 1}of{folds}",
        known_stats=data.known_stats,
        train_files=[f for f, k in zip(files, keep.tolist()) if k] if files else None,
        test_files=[files[i] for i in held_out.tolist()] if files else None,
    )


def cross_validated(
    data: Dataset, recipe, folds: int, folder: Path, seed: int = 0, progress: bool = False
) -> LabelAudit:
    """Audit the training split's labels: `folds` runs of `recipe` (in folder/folds), each predicting the
    fold it did not train on. The folds are a seeded shuffle of the training split, split evenly."""
    from .openrun import load_run
    from .train import train

    if not 2 <= folds <= len(data.train_labels):
        raise CnnlabError(f"--folds {folds}: give between 2 and the {len(data.train_labels)} training images")
    order = torch.randperm(len(data.train_labels), generator=torch.Generator().manual_seed(seed))
    probabilities = torch.zeros(len(data.train_labels), data.num_classes)
    for fold in range(folds):
        held_out = order[fold::folds].sort().values
        fold_data = fold_dataset(data, held_out, fold, folds)
        result = train(recipe, fold_data, runs_dir=folder / "folds", name=f"fold{fold + 1}", progress=progress)
        probabilities[held_out] = load_run(result.run_dir).test_predictions(fold_data).probabilities
    source = f"{folds}-fold cross-validation of recipe {recipe.description or 'given'!r}, seed {seed}"
    return find_label_issues(probabilities, data.train_labels, "train", source)


GALLERY = 50  # flagged images shown for a person to judge


def save_label_audit(result: LabelAudit, data: Dataset, folder) -> dict:
    """Write label_issues.csv (each flagged image, given and suggested label, confidence, most likely
    wrong first), gallery.png (the first GALLERY of them) and label_audit.json (settings, per-class
    counts, the flagged indices). Returns the summary written to label_audit.json."""
    import json

    from .analysis import Predictions
    from .plots import plot_label_issues
    from .runs import atomic_write_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = data.test_images if result.split == "test" else data.train_images
    atomic_write_bytes(folder / "label_issues.csv", _issues_csv(result, data))
    predictions = Predictions(list(data.classes), images, result.labels, result.probabilities)
    plot_label_issues(predictions, result.issues[:GALLERY], result.suggested, folder / "gallery.png")
    flagged_given = torch.bincount(result.labels[result.issues], minlength=data.num_classes)
    flagged_suggested = torch.bincount(result.suggested[result.issues], minlength=data.num_classes)
    summary = {
        "data": data.source,
        "checksum": data.checksum,
        "classes": list(data.classes),
        "split": result.split,
        "probabilities_from": result.source,
        "images": len(result.labels),
        "flagged": len(result.issues),
        "flagged_percent": 100.0 * len(result.issues) / max(1, len(result.labels)),
        "per_class": {
            name: {
                "threshold": float(result.thresholds[k]),
                "flagged_as_given": int(flagged_given[k]),
                "flagged_as_suggested": int(flagged_suggested[k]),
            }
            for k, name in enumerate(data.classes)
        },
        "confident_joint": result.confident_joint.tolist(),
        "issues": result.issues.tolist(),
    }
    atomic_write_bytes(folder / "label_audit.json", (json.dumps(summary, indent=1) + "\n").encode())
    return summary


def _issues_csv(result: LabelAudit, data: Dataset) -> bytes:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "image", "given_label", "suggested_label", "confidence", "given_label_probability"])
    for rank, i in enumerate(result.issues.tolist(), 1):
        given, suggested = int(result.labels[i]), int(result.suggested[i])
        writer.writerow(
            [
                rank,
                data.image_name(result.split, i),
                data.classes[given],
                data.classes[suggested],
                f"{float(result.probabilities[i, suggested]):.4f}",
                f"{float(result.probabilities[i, given]):.4f}",
            ]
        )
    return buffer.getvalue().encode()


def format_label_audit(summary: dict) -> str:
    worst = sorted(summary["per_class"].items(), key=lambda kv: -kv[1]["flagged_as_given"])[:3]
    return "\n".join(
        [
            f"label audit of the {summary['split']} split of {summary['data']} "
            f"(probabilities from {summary['probabilities_from']})",
            f"  likely wrong labels: {summary['flagged']} of {summary['images']} images "
            f"({summary['flagged_percent']:.2f}%)",
            "  most flagged classes: " + ", ".join(f"{name} {c['flagged_as_given']}" for name, c in worst),
        ]
    )


def load_label_audit(folder, data: Dataset) -> dict:
    """A label audit's summary, checked against the data it is applied to (the test split's labels)."""
    from .names import shown
    from .runfiles import read_json

    path = Path(folder) / "label_audit.json" if Path(folder).is_dir() else Path(folder)
    if not path.exists():
        raise CnnlabError(
            f"{shown(folder)}: not a cnnlab label audit (no label_audit.json); run `cnnlab label-audit` first"
        )
    summary = read_json(path, "run `cnnlab label-audit` again")
    issues = summary.get("issues")
    if not isinstance(issues, list) or summary.get("split") not in ("test", "train"):
        raise CnnlabError(f"{shown(path)} is damaged (no list of issues); run `cnnlab label-audit` again")
    if summary.get("checksum") and data.checksum and summary["checksum"] != data.checksum:
        raise CnnlabError(f"{shown(folder)} audits other data ({summary.get('data')}); audit the data you evaluate on")
    if summary["split"] != "test":
        raise CnnlabError(
            f"{shown(folder)} audits the training split's labels; evaluation excludes test images, so audit "
            "the test split (cnnlab label-audit --run RUN)"
        )
    if any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(data.test_labels) for i in issues):
        raise CnnlabError(f"{shown(folder)}: its test indices do not fit this test split of {len(data.test_labels)}")
    return summary
