"""Batched, per-sample augmentation on the device that holds the batch.

Each function takes a uint8 batch [B, C, H, W] and a torch.Generator, and returns a new batch;
every image gets its own random draw, with no per-image Python.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """The chapter's `RandomCrop(32, padding)` then `RandomHorizontalFlip()`, for a whole batch at once.

    Zero-pad by `padding`, pick a crop offset in [0, 2*padding] per image and axis, and mirror about
    half the images. Crop and flip are one gather: the flip just reverses each image's column index.
    """
    b, c, h, w = images.shape
    device = images.device
    if padding > 0:
        offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator, device=device)
        images = F.pad(images, (padding, padding, padding, padding))
    else:
        offsets = torch.zeros(b, 2, dtype=torch.long, device=device)
    rows = offsets[:, 0:1] + torch.arange(h, device=device)  # [B, H]
    cols = offsets[:, 1:2] + torch.arange(w, device=device)  # [B, W]
    if flip:
        mirrored = torch.rand(b, generator=generator, device=device) < 0.5
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    batch_index = torch.arange(b, device=device)[:, None, None, None]
    channel_index = torch.arange(c, device=device)[None, :, None, None]
    return images[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]
