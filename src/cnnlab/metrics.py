"""What a deployment asks of a classifier beyond accuracy: per-class precision, recall and F1, their macro
and weighted averages, balanced accuracy, top-5 accuracy, and calibration (expected calibration error and
temperature scaling, Guo et al. 2017, "On Calibration of Modern Neural Networks").

Everything takes logits [N, C] and labels [N] and returns plain Python numbers, so a report, a JSON file and
a test read the same values. scikit-learn's classification_report is the reference the tests hold these to;
it is not needed at run time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ECE_BINS = 15  # equal-width confidence bins, as in Guo et al.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0  # far outside what a trained network needs (Guo et al.: 1-3)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """Per-class precision/recall/F1/support, macro and weighted averages, balanced accuracy, top-5 accuracy
    and ECE, all in percent except support. A class never predicted has precision 0 (scikit-learn's
    zero_division=0); a class absent from the labels has recall 0 and is left out of balanced accuracy."""
    logits, labels = logits.float(), labels.long()
    n_classes = len(classes)
    predictions = logits.argmax(dim=1)
    matrix = torch.bincount(labels * n_classes + predictions, minlength=n_classes**2).view(n_classes, n_classes)
    true_positive = matrix.diag().double()
    predicted, support = matrix.sum(dim=0).double(), matrix.sum(dim=1).double()
    precision = torch.where(predicted > 0, true_positive / predicted.clamp_min(1), 0.0)
    recall = torch.where(support > 0, true_positive / support.clamp_min(1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), 0.0)
    weights = support / support.sum()
    present = support > 0
    per_class = {
        name: {
            "precision": 100 * float(precision[i]),
            "recall": 100 * float(recall[i]),
            "f1": 100 * float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    return {
        "per_class": per_class,
        "macro": {k: 100 * float(v.mean()) for k, v in (("precision", precision), ("recall", recall), ("f1", f1))},
        "weighted": {
            k: 100 * float((v * weights).sum()) for k, v in (("precision", precision), ("recall", recall), ("f1", f1))
        },
        "accuracy": 100 * float(true_positive.sum() / support.sum()),
        "balanced_acc": 100 * float(recall[present].mean()),
        "top5_acc": top_k_accuracy(logits, labels, 5),
        "ece": expected_calibration_error(logits, labels),
    }


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percent of images whose label is among the k highest logits (k is capped at the number of classes)."""
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return 100.0 * float(hits.double().mean())


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE in percent: the images are binned by their top probability into `bins` equal-width bins, and
    the gap between each bin's mean confidence and its accuracy is averaged, weighted by the bin's size."""
    rows = reliability_bins(logits, labels, bins)
    gaps = sum(r["count"] * abs(r["confidence"] - r["accuracy"]) for r in rows if r["count"])
    return gaps / len(labels)


def reliability_bins(logits: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> list[dict]:
    """Per confidence bin: its range, image count, mean confidence and accuracy (percent): the points of a
    reliability diagram, and what the ECE averages."""
    confidence, predictions = logits.float().softmax(dim=1).max(dim=1)
    right = (predictions == labels).double()
    # Bin b holds confidences in (b/bins, (b+1)/bins]; the top probability is never below 1/C > 0.
    which = (confidence.double() * bins).ceil().long().clamp(1, bins) - 1
    rows = []
    for b in range(bins):
        in_bin = which == b
        count = int(in_bin.sum())
        rows.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "count": count,
                "confidence": 100 * float(confidence[in_bin].double().mean()) if count else None,
                "accuracy": 100 * float(right[in_bin].mean()) if count else None,
            }
        )
    return rows


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of softmax(logits / T) on these
    (held-out) images. One parameter, so it never changes a prediction, only how sure it sounds.
    Optimised over log T, which keeps T positive, with L-BFGS from T = 1.

    When every held-out image is predicted right, the likelihood has no finite optimum (T -> 0 makes every
    answer certain), which would be a claim of certainty from a handful of images: T stays 1. The result
    is also bounded to [MIN_TEMPERATURE, MAX_TEMPERATURE]."""
    logits, labels = logits.detach().float(), labels.long()
    if bool((logits.argmax(dim=1) == labels).all()):
        return 1.0
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    return min(max(temperature, MIN_TEMPERATURE), MAX_TEMPERATURE) if math.isfinite(temperature) else 1.0


def calibration_fields(val_logits: torch.Tensor, val_labels: torch.Tensor) -> dict:
    """An epoch row's calibration: the temperature fitted on the validation split, and its ECE before and after."""
    temperature = fit_temperature(val_logits, val_labels)
    return {
        "temperature": temperature,
        "val_ece": expected_calibration_error(val_logits, val_labels),
        "val_ece_calibrated": expected_calibration_error(val_logits / temperature, val_labels),
    }
