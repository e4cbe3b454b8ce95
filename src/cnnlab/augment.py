"""Batched, per-sample augmentation on the device that holds the batch.

Each function takes a uint8 batch [B, C, H, W] and a torch.Generator, and returns a new batch;
every image gets its own random draw, with no per-image Python.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator, *,
                     reflect: bool = False, mirrored: torch.Tensor | None = None, size: int = 0) -> torch.Tensor:
    """The chapter's `RandomCrop(32, padding)` then `RandomHorizontalFlip()`, for a whole batch at once.

    Pad by `padding`, pick a crop offset in [0, 2*padding] per image and axis, and mirror about half
    the images (or exactly those in `mirrored`, a bool per image). Crop and flip are one gather: the
    flip just reverses each image's column index. Zero padding is the chapter's; `reflect` fills the
    border with the mirror image of the edge instead, by reflecting the indices (no padded copy).
    A `size` smaller than the image crops size x size windows instead (offsets range over the extra
    room too): the same objects at the same scale, fewer pixels to compute on.
    """
    b, c, h, w = images.shape
    device = images.device
    out_h, out_w = (size, size) if 0 < size < min(h, w) else (h, w)
    if padding > 0 or (out_h, out_w) != (h, w):
        room_y, room_x = 2 * padding + h - out_h, 2 * padding + w - out_w
        if room_y == room_x:  # square images: one draw for both axes
            offsets = torch.randint(0, room_y + 1, (b, 2), generator=generator, device=device)
        else:
            offsets = torch.stack([torch.randint(0, room + 1, (b,), generator=generator, device=device)
                                   for room in (room_y, room_x)], dim=1)
        if not reflect and padding > 0:
            images = F.pad(images, (padding, padding, padding, padding))
    else:
        offsets = torch.zeros(b, 2, dtype=torch.long, device=device)
    rows = offsets[:, 0:1] + torch.arange(out_h, device=device)  # [B, out_h]
    cols = offsets[:, 1:2] + torch.arange(out_w, device=device)  # [B, out_w]
    if reflect and padding > 0:  # an index -k before the edge reads pixel k; past the far edge, likewise
        rows, cols = _reflect(rows - padding, h), _reflect(cols - padding, w)
    if flip:
        if mirrored is None:
            mirrored = torch.rand(b, generator=generator, device=device) < 0.5
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    batch_index = torch.arange(b, device=device)[:, None, None, None]
    channel_index = torch.arange(c, device=device)[None, :, None, None]
    return images[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


# Beyond the chapter: the regularizers of a modern recipe. These act on the normalised float batch
# (where 0 is the mean colour), except colour jitter, which needs pixel values in [0, 1].


def _boxes(b: int, h: int, w: int, box_h: torch.Tensor, box_w: torch.Tensor, generator, device) -> torch.Tensor:
    """A bool mask [B, 1, H, W]: one box per image of the given sizes, at a random place inside the image."""
    top = (torch.rand(b, generator=generator, device=device) * (h - box_h + 1)).floor().long()
    left = (torch.rand(b, generator=generator, device=device) * (w - box_w + 1)).floor().long()
    ys, xs = torch.arange(h, device=device), torch.arange(w, device=device)
    inside_y = (ys[None, :] >= top[:, None]) & (ys[None, :] < (top + box_h)[:, None])
    inside_x = (xs[None, :] >= left[:, None]) & (xs[None, :] < (left + box_w)[:, None])
    return (inside_y[:, :, None] & inside_x[:, None, :])[:, None]


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """DeVries & Taylor (2017): one size x size square per image set to the mean colour (0 once normalised).
    The square lies fully inside the image, so every image loses the same area."""
    b, _, h, w = x.shape
    side = torch.full((b,), min(size, h, w), device=x.device, dtype=torch.long)
    return x.masked_fill(_boxes(b, h, w, side, side, generator, x.device), 0.0)


def random_erasing(x: torch.Tensor, probability: float, generator: torch.Generator,
                   area=(0.02, 0.33), log_ratio=(-1.2040, 1.2040)) -> torch.Tensor:
    """Zhong et al. (2017): with `probability`, a box of random area (2-33%) and aspect (0.3-3.3)
    per image, filled with normal noise (timm's 'pixel' mode)."""
    b, c, h, w = x.shape
    rand = lambda: torch.rand(b, generator=generator, device=x.device)
    share = area[0] + (area[1] - area[0]) * rand()
    ratio = torch.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * rand())
    box_h = (share * h * w * ratio).sqrt().round().long().clamp(1, h)
    box_w = (share * h * w / ratio).sqrt().round().long().clamp(1, w)
    mask = _boxes(b, h, w, box_h, box_w, generator, x.device) & (rand() < probability)[:, None, None, None]
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.where(mask, noise, x)


def color_jitter(x01: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation, each scaled by a factor from [1 - strength, 1 + strength]
    drawn per image (torchvision's ColorJitter(s, s, s) without the hue), on pixels in [0, 1]."""
    b = x01.shape[0]
    factor = lambda: (1 + strength * (2 * torch.rand(b, generator=generator, device=x01.device) - 1)).view(b, 1, 1, 1)
    gray = lambda img: (0.299 * img[:, 0:1] + 0.587 * img[:, 1:2] + 0.114 * img[:, 2:3])
    x = (x01 * factor()).clamp(0, 1)  # brightness
    mean = gray(x).mean(dim=(2, 3), keepdim=True)
    x = (mean + factor() * (x - mean)).clamp(0, 1)  # contrast
    g = gray(x)
    return (g + factor() * (x - g)).clamp(0, 1)  # saturation


def mix(x: torch.Tensor, y: torch.Tensor, mixup: float, cutmix: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al., 2018) or CutMix (Yun et al., 2019) on a batch, one of them per batch when both
    are on (as timm does). Returns (mixed x, y, y of the partner images, weight of y). The loss is
    w * CE(y) + (1 - w) * CE(y_partner). Draws come from torch's global generator (saved in checkpoints)."""
    use_cutmix = cutmix > 0 and (mixup <= 0 or bool(torch.rand(()) < 0.5))
    alpha = cutmix if use_cutmix else mixup
    weight = float(torch.distributions.Beta(alpha, alpha).sample())
    partner = torch.randperm(len(y)).to(x.device)
    if not use_cutmix:
        return weight * x + (1 - weight) * x[partner], y, y[partner], weight
    b, _, h, w = x.shape
    cut = (1 - weight) ** 0.5  # the box covers a (1 - weight) share of the image
    box_h = torch.full((1,), int(round(h * cut)), device=x.device, dtype=torch.long)
    box_w = torch.full((1,), int(round(w * cut)), device=x.device, dtype=torch.long)
    mask = _boxes(1, h, w, box_h, box_w, None, x.device)
    mixed = torch.where(mask, x[partner], x)
    return mixed, y, y[partner], 1.0 - float(mask.float().mean())  # the weight the pasted box really left
