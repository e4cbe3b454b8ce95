"""Accuracy, loss and per-class accuracy of a model on a split, in eval mode and float32 (unless the
caller opens an autocast: the training loop's learning-curve points), so that a run's final row,
`evaluate`, `predict` and exported models agree on every image."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import CnnlabError
from .loader import Loader
from .metrics import classification_metrics, expected_calibration_error, reliability_bins
from .recipe import Recipe

# Batches of every evaluation outside training (evaluate, plots, robustness, audit features): the recipe default.
EVAL_BATCH_SIZE = Recipe.eval_batch_size


# Test-time augmentation: each view set is (shift, weight) pairs, and every shifted image is also seen
# mirrored. A shift of (dy, dx) moves the image dy pixels down and dx right (see `shift`).
TTA_VIEWS = {
    # the image and its one-pixel shifts up, down, left and right: 10 views, equal weights
    "shifts": (((0, 0), 1.0), ((-1, 0), 1.0), ((1, 0), 1.0), ((0, -1), 1.0), ((0, 1), 1.0)),
    # airbench's: the image, weighted half, and its two diagonal one-pixel shifts: 6 views, so 40% less
    # time, and over 4 measured speedrun runs within 0.05 point of the 10 shifts (BENCHMARKS.md)
    "diagonals": (((0, 0), 2.0), ((-1, -1), 1.0), ((1, 1), 1.0)),
}


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate a batch by (dy, dx) pixels, filling the uncovered edge by reflection (no black border)."""
    if dy == dx == 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    return padded[..., 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]


@torch.no_grad()
def tta_logits(
    model: torch.nn.Module, x: torch.Tensor, views: str = "shifts", plain: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted mean logits over a TTA_VIEWS set: each shift as it is and mirrored. `plain`: the logits of `x`
    itself, when a plain evaluation has just computed them; that view then takes them instead of a pass."""
    total, weights = None, 0.0
    for mirrored, view in enumerate((x, x.flip(-1))):
        for (dy, dx), weight in TTA_VIEWS[views]:
            reused = plain is not None and not mirrored and dy == dx == 0
            logits = weight * (plain.to(x.device) if reused else model(shift(view, dy, dx))).float()
            total, weights = (logits if total is None else total + logits), weights + weight
    return total / weights


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, loader: Loader, tta: bool = False, views: str = "shifts", plain: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, C] and labels [N] for every image of an evaluation loader, in order (with `tta`, averaged
    over the `views` set of TTA_VIEWS; `plain`, an `evaluate` result of this model on this loader, gives the
    unshifted, unmirrored view's logits)."""
    was_training = model.training
    model.eval()
    logits, labels, start = [], [], 0
    for x, y in loader:
        known = None
        if tta and plain is not None:
            end = start + len(y)
            if not torch.equal(plain["labels"][start:end], y.cpu()):
                raise RuntimeError("the plain result reused for TTA is not of this loader's images, in its order")
            known, start = plain["logits"][start:end], end
        logits.append(tta_logits(model, x, views, known) if tta else model(x).float())
        labels.append(y)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def evaluate(
    model: torch.nn.Module, loader: Loader, tta: bool = False, views: str = "shifts", plain: dict | None = None
) -> dict:
    """{'loss', 'acc' (percent), 'logits', 'probabilities', 'predictions', 'labels'} over the loader's split.
    With `tta`, `plain` may hand over this model's plain result on the same loader (see predict_logits)."""
    logits, labels = predict_logits(model, loader, tta, views, plain)
    predictions = logits.argmax(dim=1)
    return {
        "logits": logits.cpu(),
        "probabilities": logits.softmax(dim=1).cpu(),
        "loss": float(F.cross_entropy(logits, labels)),
        "acc": 100.0 * int((predictions == labels).sum()) / len(labels),
        "predictions": predictions.cpu(),
        "labels": labels.cpu(),
    }


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    correct = torch.bincount(labels[predictions == labels], minlength=num_classes).double()
    total = torch.bincount(labels, minlength=num_classes).double().clamp_min(1)
    return (100.0 * correct / total).tolist()


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[true, predicted] counts."""
    return torch.bincount(labels * num_classes + predictions, minlength=num_classes**2).view(num_classes, num_classes)


def most_confused(matrix: torch.Tensor, k: int = 5) -> list[dict]:
    """The k class pairs with the most errors between them, both directions added, each also given apart.

    fastai's most_confused ranks one direction at a time; a pair like cat/dog is one problem, so it is
    ranked once by its total, and the split says which way the model leans.
    """
    n = matrix.shape[0]
    pairs = []
    for a in range(n):
        for b in range(a + 1, n):
            ab, ba = int(matrix[a, b]), int(matrix[b, a])
            if ab + ba:
                pairs.append({"a": a, "b": b, "total": ab + ba, "a_as_b": ab, "b_as_a": ba})
    pairs.sort(key=lambda p: (-p["total"], p["a"], p["b"]))
    return pairs[:k]


def tta_views_of(run) -> str:
    """The TTA view set `run` (openrun.Run) was scored with at the end of training, so that evaluating or
    predicting with TTA later repeats it; runs saved before recipes named one used the 10 shifts."""
    saved = run.checkpoint.get("recipe")
    views = saved.get("tta_views", "shifts") if isinstance(saved, dict) else "shifts"
    if views not in TTA_VIEWS:
        raise CnnlabError(
            f"{run.weights.file} was scored with TTA views {views!r}, which this cnnlab does not know "
            f"({', '.join(TTA_VIEWS)}); leave out --tta, or use the cnnlab that trained it"
        )
    return views


def evaluation_report(run, data, tta: bool = False, audit=None, label_audit=None) -> dict:
    """What `cnnlab evaluate --json` prints for `run` (openrun.Run) on `data`'s test split: accuracy, loss,
    per-class accuracy and the weights used; with `audit` (a leak audit of the same data), also the
    accuracy without the test images it found duplicated in train, and on those alone; with `label_audit`
    (a label audit of the test split), the same without the images it flagged as likely mislabelled."""
    excluded = {}  # checked before the evaluation: an audit of other data fails fast
    if audit is not None:
        from .audit import load_audit

        excluded["duplicate_free"] = (audit, load_audit(audit, data)["leaked_test"])
    if label_audit is not None:
        from .labelaudit import load_label_audit

        excluded["label_issue_free"] = (label_audit, load_label_audit(label_audit, data)["issues"])
    device = next(run.model.parameters()).device
    loader = Loader(data.test_images, data.test_labels, EVAL_BATCH_SIZE, run.normalizer, device=device)
    views = tta_views_of(run) if tta else None  # read only when used: a plain evaluation needs no view set
    result = evaluate(run.model, loader, tta=tta, views=views or "shifts")
    calibrated = result["logits"] / run.temperature
    report = {
        "checkpoint": str(run.weights.file),
        "weights": run.weights.to_dict(),
        "data": data.source,
        "tta": tta,
        "tta_views": views,
        "test_images": int(result["labels"].numel()),
        "test_acc": result["acc"],
        "test_loss": result["loss"],
        "per_class_acc": dict(
            zip(data.classes, per_class_accuracy(result["predictions"], result["labels"], data.num_classes))
        ),
        "metrics": classification_metrics(result["logits"], result["labels"], data.classes),
        "temperature": run.temperature,
        "temperature_fitted": run.fitted_temperature is not None,
        "ece_calibrated": expected_calibration_error(calibrated, result["labels"]),
        "reliability": reliability_bins(calibrated, result["labels"]),
    }
    right = result["predictions"] == result["labels"]
    share = lambda mask: 100.0 * float(right[mask].double().mean()) if mask.any() else float("nan")
    for key, (folder, indices) in excluded.items():
        keep = torch.ones(len(result["labels"]), dtype=torch.bool)
        keep[indices] = False
        report[key] = {
            "audit": str(folder),
            "excluded": int((~keep).sum()),
            "test_images": int(keep.sum()),
            "test_acc": share(keep),
            "acc_on_excluded": share(~keep),
        }
    return report
