"""Imbalanced classes: weights for the cross-entropy, and the per-image weights of a class-balanced sampler.

- `balanced`: a class's weight is inversely proportional to its count, N / (C * n_c), scikit-learn's
  "balanced": every class weighs as much in the loss as the others put together would if all were equal.
- `effective`: the effective number of samples of Cui et al. (CVPR 2019), (1 - beta^n_c) / (1 - beta):
  extra images of a class add less and less, because they overlap with those already there, so the
  weights are (1 - beta) / (1 - beta^n_c), scaled to sum to C. beta = 0 is no weighting, beta -> 1 is
  `balanced`; the paper's choice for CIFAR-10-LT is 0.9999.
- The balanced sampler draws each epoch's images with replacement, every class equally likely (as many
  draws as there are images): rare images are seen many times an epoch, common ones not all.
"""

from __future__ import annotations

import torch

from .errors import UsageError


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(labels.cpu(), minlength=num_classes)


def class_weights(labels: torch.Tensor, num_classes: int, how: str, beta: float) -> torch.Tensor | None:
    """The cross-entropy's per-class weights (mean 1) for the training labels, or None for `none`."""
    if how == "none":
        return None
    counts = class_counts(labels, num_classes).double()
    if bool((counts == 0).any()):
        missing = int((counts == 0).nonzero()[0])
        raise UsageError(
            f"class_weights {how}: class {missing} has no training image, so it has no weight; "
            "give every class some training images or use class_weights none",
            parameters=("class_weights",),
        )
    if how == "balanced":
        weights = counts.sum() / (num_classes * counts)
    else:
        weights = (1 - beta) / (1 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return (weights * num_classes / weights.sum()).float()


def balanced_sample_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each image's chance of being drawn, so that every class present is drawn equally often."""
    counts = class_counts(labels, num_classes).double()
    return (1.0 / counts[labels.cpu()]).float()


def long_tailed_counts(largest: int, classes: int, ratio: float) -> list[int]:
    """Images per class of an exponentially long-tailed split (Cao et al. 2019, LDAM-DRW): class k keeps
    largest * ratio^(-k / (classes - 1)), truncated, so the first keeps `largest` and the last largest / ratio
    (CIFAR-10, ratio 100: 5,000 down to 50, 12,406 in all)."""
    return [int(largest * ratio ** (-k / (classes - 1))) for k in range(classes)]


def long_tailed(data, ratio: float = 100.0, seed: int = 0):
    """`data` (a Dataset with balanced training classes) with its training split made long-tailed by
    long_tailed_counts: a seeded choice of images per class; the test split unchanged."""
    import dataclasses

    counts = long_tailed_counts(int(class_counts(data.train_labels, data.num_classes).min()), data.num_classes, ratio)
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for k, count in enumerate(counts):
        members = (data.train_labels == k).nonzero().flatten()
        keep.append(members[torch.randperm(len(members), generator=generator)[:count]])
    index = torch.cat(keep).sort().values
    files = [data.train_files[i] for i in index.tolist()] if data.train_files else None
    return dataclasses.replace(
        data,
        train_images=data.train_images[index],
        train_labels=data.train_labels[index],
        train_files=files,
        train_groups=None,
        _grayscale=None,
    )
