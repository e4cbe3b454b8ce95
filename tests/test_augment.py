"""Batched crop and flip: shapes, bounds, per-image randomness; evaluation batches are never augmented."""

from __future__ import annotations

import torch

from cnnlab.augment import Augmentation, random_crop_flip
from cnnlab.loader import Loader, Normalizer


def distinct_images(b: int, size: int = 8) -> torch.Tensor:
    """Every pixel of an image has its own non-zero value, so a crop's position can be read off it."""
    base = torch.arange(1, size * size + 1, dtype=torch.uint8).view(1, 1, size, size)
    return base.repeat(b, 3, 1, 1)


def test_shapes_and_dtype_are_kept():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = random_crop_flip(x, padding=4, flip=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8


def test_every_crop_is_a_window_of_the_padded_frame():
    padding, size = 2, 8
    x = distinct_images(300, size)
    out = random_crop_flip(x, padding, flip=True, generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x[0], (padding,) * 4)
    windows = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            w = padded[:, dy : dy + size, dx : dx + size]
            windows += [((dy, dx, False), w), ((dy, dx, True), w.flip(-1))]
    seen = set()
    for img in out:
        matches = [key for key, w in windows if torch.equal(img, w)]
        assert len(matches) == 1, "output is not a window of the zero-padded image"
        seen.add(matches[0])
    assert len(seen) > 35  # the 50 (offset, flip) combinations are all reachable, and used


def test_offsets_cover_the_whole_padding_range_uniformly():
    x = distinct_images(9000, 8)
    out = random_crop_flip(x, padding=4, flip=False, generator=torch.Generator().manual_seed(2))
    # The top-left pixel's value tells the offset: value v sits at row (v-1)//8, col (v-1)%8 of the image.
    counts = torch.zeros(9, 9)
    for img in out[:, 0]:
        nz = img.nonzero()
        r, c = nz[0].tolist()  # first non-padding pixel in row-major order
        v = int(img[r, c]) - 1
        dy, dx = 4 - r + v // 8, 4 - c + v % 8
        counts[dy, dx] += 1
    expected = 9000 / 81
    assert counts.min() > expected * 0.6 and counts.max() < expected * 1.4


def test_flips_are_per_image_and_about_half():
    x = distinct_images(4000, 8)
    out = random_crop_flip(x, padding=0, flip=True, generator=torch.Generator().manual_seed(3))
    flipped = torch.tensor([torch.equal(o, x[0].flip(-1)) for o in out])
    unflipped = torch.tensor([torch.equal(o, x[0]) for o in out])
    assert bool((flipped ^ unflipped).all())
    assert 0.46 < flipped.float().mean() < 0.54


def test_same_generator_seed_gives_same_augmentation():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    a = random_crop_flip(x, 4, True, torch.Generator().manual_seed(5))
    b = random_crop_flip(x, 4, True, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_normalizer_matches_the_chapter_formula():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = Normalizer(mean, std)(x, channels_last=True)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, ref, atol=1e-5)


def test_evaluation_loader_is_never_augmented_and_keeps_order():
    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(50) % 10
    norm = Normalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    loader = Loader(x, y, 16, norm, device="cpu")
    xs, ys = zip(*loader)
    assert torch.equal(torch.cat(ys), y)
    assert torch.allclose(torch.cat(xs), norm(x))
    assert len(loader) == 4


def test_training_loader_shuffles_every_image_once_per_epoch():
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 4, 4).contiguous()
    y = torch.arange(100)
    loader = Loader(x, y, 32, Normalizer((0, 0, 0), (1, 1, 1)), device="cpu", augment=Augmentation())
    first = torch.cat([b for _, b in loader])
    second = torch.cat([b for _, b in loader])
    assert sorted(first.tolist()) == list(range(100)) and not torch.equal(first, second)


def test_early_crops_are_windows_of_the_padded_image_covering_every_offset():
    padding, size, crop = 2, 8, 5
    x = distinct_images(2000, size)
    out = random_crop_flip(x, padding, flip=True, generator=torch.Generator().manual_seed(4), size=crop)
    assert out.shape == (2000, 3, crop, crop)
    padded = torch.nn.functional.pad(x[0], (padding,) * 4)
    room = 2 * padding + size - crop
    windows = {}
    for dy in range(room + 1):
        for dx in range(room + 1):
            w = padded[:, dy : dy + crop, dx : dx + crop]
            windows[(dy, dx, False)], windows[(dy, dx, True)] = w, w.flip(-1)
    seen = set()
    for img in out:
        matches = [key for key, w in windows.items() if torch.equal(img, w)]
        assert len(matches) == 1, "output is not a window of the zero-padded image"
        seen.add(matches[0])
    assert len(seen) == len(windows)  # all 72 (offset, flip) combinations drawn


def test_the_loader_crops_small_for_the_early_epochs_only():
    x = torch.randint(0, 256, (40, 3, 12, 12), dtype=torch.uint8)
    loader = Loader(
        x,
        torch.arange(40) % 10,
        16,
        Normalizer((0, 0, 0), (1, 1, 1)),
        device="cpu",
        augment=Augmentation(crop_padding=1, early_crop=8, early_crop_epochs=2),
    )
    sides = [[tuple(b.shape[-2:]) for b, _ in loader] for _ in range(3)]
    assert sides == [[(8, 8)] * 3, [(8, 8)] * 3, [(12, 12)] * 3]
