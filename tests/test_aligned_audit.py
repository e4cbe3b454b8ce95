"""The aligned leak audit on real CIFAR-10 images: a planted copy of each kind of alteration is found
and paired with its source, unrelated photographs are not, and the result is the same every time."""

from __future__ import annotations

import pytest
import torch

from cnnlab.align import aligned_similarity, shifted, zoomed
from cnnlab.audit import audit
from cnnlab.data import Dataset
from cnnlab.planted import KINDS, altered

TRAIN, UNRELATED = 300, 24


@pytest.fixture(scope="module")
def planted(real_dataset):
    """300 real training images as the training split; as the test split, an altered copy of one of them
    per kind of alteration (test images 0-7, of training images 0, 10, 20, ...), then 24 real test images."""
    real = real_dataset
    sources = torch.arange(len(KINDS)) * 10
    copies = torch.cat(
        [altered(real.train_images[s : s + 1], kind, seed=k) for k, (s, kind) in enumerate(zip(sources, KINDS))]
    )
    test_images = torch.cat([copies, real.test_images[:UNRELATED]])
    test_labels = torch.cat([real.train_labels[sources], real.test_labels[:UNRELATED]])
    data = Dataset(
        source="planted copies",
        classes=list(real.classes),
        train_images=real.train_images[:TRAIN],
        train_labels=real.train_labels[:TRAIN],
        test_images=test_images,
        test_labels=test_labels,
        checksum="planted",
    )
    return data, sources


def test_a_planted_copy_of_every_kind_is_found_with_its_source(planted):
    data, sources = planted
    result = audit(data)
    assert result.space == "aligned"
    found = {p.index_a: p.index_b for p in result.closest_cross if p.similarity >= result.threshold}
    assert found == {k: int(s) for k, s in enumerate(sources)}, "each copy, and nothing else, paired with its source"
    assert result.leaked_test == list(range(len(KINDS)))


def test_the_pixel_audit_misses_the_mirrored_copy_that_the_aligned_one_finds(planted):
    data, _ = planted
    mirrored = KINDS.index("mirror")
    assert mirrored not in audit(data, "pixels").leaked_test
    assert mirrored in audit(data).leaked_test


def test_the_audit_is_deterministic(planted):
    data, _ = planted
    first, second = audit(data), audit(data)
    assert [(p.index_a, p.index_b, p.similarity) for p in first.closest_cross] == [
        (p.index_a, p.index_b, p.similarity) for p in second.closest_cross
    ]
    assert first.pairs == second.pairs


def test_aligned_similarity_undoes_shifts_mirrors_zooms_and_colour_casts(real_dataset):
    images = real_dataset.train_images[:16]
    x = images.float()
    same = {
        "shifted": shifted(x, 2, -3),
        "mirrored": x.flip(-1),
        "zoomed": zoomed(x, 1.15),
        "cast": x * torch.tensor([0.8, 1.0, 1.2]).view(1, 3, 1, 1) + 15,
    }
    for name, copy in same.items():
        assert (aligned_similarity(copy, images) > 0.85).all(), name
    others = aligned_similarity(images, images.roll(1, 0))  # each against a different photograph
    assert (others < 0.75).float().mean() >= 0.9


def test_a_split_of_one_image_is_not_its_own_duplicate(planted):
    data, _ = planted
    single = Dataset(
        source="one test image",
        classes=data.classes,
        train_images=data.train_images[:20],
        train_labels=data.train_labels[:20],
        test_images=data.test_images[-1:],
        test_labels=data.test_labels[-1:],
        checksum="single",
    )
    assert audit(single).counts["within_test"] == {"exact_pairs": 0, "near_pairs": 0}
