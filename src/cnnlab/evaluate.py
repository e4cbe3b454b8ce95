"""Accuracy, loss and per-class accuracy of a model on a split; always in float32 and eval mode,
so that `evaluate`, `predict` and exported models agree on every image."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .loader import Loader


@torch.no_grad()
def predict_logits(model: torch.nn.Module, loader: Loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, C] and labels [N] for every image of an evaluation loader, in order."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        logits.append(model(x).float())
        labels.append(y)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: torch.nn.Module, loader: Loader) -> dict:
    """{'loss', 'acc' (percent), 'predictions'} over the loader's split."""
    logits, labels = predict_logits(model, loader)
    predictions = logits.argmax(dim=1)
    return {
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
    return torch.bincount(labels * num_classes + predictions, minlength=num_classes ** 2).view(num_classes, num_classes)


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
