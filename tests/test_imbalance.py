"""Imbalanced classes: class weights against worked answers and scikit-learn, the balanced sampler's draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.augment import Augmentation
from cnnlab.errors import UsageError
from cnnlab.imbalance import balanced_sample_weights, class_weights
from cnnlab.loader import Loader, Normalizer
from cnnlab.prepare import prepare
from cnnlab.recipe_files import load_recipe


def test_balanced_weights_are_inverse_frequency_as_scikit_learn_computes_them():
    sklearn = pytest.importorskip("sklearn.utils.class_weight")
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    ours = class_weights(labels, 3, "balanced", 0.9999)
    theirs = torch.tensor(sklearn.compute_class_weight("balanced", classes=np.arange(3), y=labels.numpy()))
    assert torch.allclose(ours.double(), theirs * 3 / theirs.sum(), atol=1e-6)  # the same, scaled to mean 1
    assert class_weights(labels, 3, "none", 0.9999) is None


def test_effective_number_weights_match_a_hand_worked_case():
    # counts 1 and 3, beta 0.5: effective numbers 1 and 1.75, weights 1/1 and 1/1.75, scaled to sum to 2.
    weights = class_weights(torch.tensor([0, 1, 1, 1]), 2, "effective", 0.5)
    assert weights.tolist() == pytest.approx([2 * 1 / (1 + 1 / 1.75), 2 * (1 / 1.75) / (1 + 1 / 1.75)])
    with pytest.raises(UsageError, match="class 2 has no training image"):
        class_weights(torch.tensor([0, 1]), 3, "balanced", 0.9999)


def test_the_balanced_sampler_draws_every_class_about_equally_and_reproducibly():
    labels = torch.tensor([0] * 900 + [1] * 100)
    images = torch.zeros(1000, 3, 4, 4, dtype=torch.uint8)
    plain = Augmentation.of(load_recipe("seed", {"crop_padding": 0, "flip": False}))  # a training loader, unaltered
    make = lambda: Loader(
        images, labels, 100, Normalizer((0.5,) * 3, (0.5,) * 3), device="cpu", augment=plain, seed=3,
        sample_weights=balanced_sample_weights(labels, 2),
    )  # fmt: skip
    drawn = torch.cat([y for _, y in make()])
    assert len(drawn) == 1000 and 0.4 < float(drawn.float().mean()) < 0.6  # half the draws are the rare class
    assert torch.equal(torch.cat([y for _, y in make()]), drawn)  # the seed decides the draws


def test_a_weighted_and_resampled_recipe_sets_both_from_the_training_split(archive):
    from cnnlab.data import load_dataset

    data = load_dataset(str(archive), progress=False)
    recipe = load_recipe("seed", {"class_weights": "effective", "sampler": "balanced", "val_split": "40"})
    state = prepare(recipe, data).state
    assert state.class_weight is not None and len(state.class_weight) == 10
    assert float(state.class_weight.mean()) == pytest.approx(1.0)
    assert state.train_loader.sample_weights is not None and len(state.train_loader.sample_weights) == 260


def test_long_tailed_cifar10_has_the_papers_counts_and_keeps_the_test_split(archive):
    from cnnlab.data import load_dataset
    from cnnlab.imbalance import long_tailed, long_tailed_counts

    assert long_tailed_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    data = load_dataset(str(archive), progress=False)
    tailed = long_tailed(data, ratio=10)
    assert tailed.train_labels.bincount().tolist() == long_tailed_counts(30, 10, 10)
    assert torch.equal(tailed.test_labels, data.test_labels) and len(data.train_labels) == 300
    assert torch.equal(long_tailed(data, ratio=10).train_images, tailed.train_images)  # seeded
