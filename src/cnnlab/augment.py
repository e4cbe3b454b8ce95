"""Batched, per-sample augmentation on the device that holds the batch.

`Augmentation` is the whole description, a frozen value built from a recipe; the loader applies it
to each batch in pixel space (`Augmentation.apply`), then normalises once. Each function takes a
batch [B, C, H, W] and a torch.Generator and returns a new batch: every image gets its own random
draw, with no per-image Python. Geometry (crop, flip) works on the uint8 pixels; colour and
occlusion on the same pixels scaled to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """How the training images are varied (every field as in the recipe; evaluation has none)."""

    crop_padding: int = 0  # random crops of the image padded by this many pixels
    reflect: bool = False  # the padding mirrors the edge instead of being black
    flip: bool = False  # random horizontal mirror
    alternate_flip: bool = False  # each image mirrored in every other epoch instead of by chance
    cutout: int = 0  # side of the square hidden per image
    random_erasing: float = 0.0  # probability of a box of noise per image
    color_jitter: float = 0.0  # brightness, contrast and saturation strength
    early_crop: int = 0  # the first early_crop_epochs epochs train on crops of this side
    early_crop_epochs: int = 0

    @staticmethod
    def of(recipe) -> Augmentation:
        return Augmentation(
            recipe.crop_padding,
            recipe.pad_mode == "reflect",
            recipe.flip,
            recipe.alternate_flip,
            recipe.cutout,
            recipe.random_erasing,
            recipe.color_jitter,
            recipe.early_crop,
            recipe.early_crop_epochs,
        )

    def crop_size(self, epochs_done: int) -> int:
        """The side of this epoch's training crops; 0 = whole images."""
        return self.early_crop if epochs_done < self.early_crop_epochs else 0

    def apply(
        self,
        images: torch.Tensor,
        generator: torch.Generator,
        normalize,
        epochs_done: int,
        mirrored: torch.Tensor | None = None,
        channels_last: bool = False,
    ) -> torch.Tensor:
        """A uint8 batch varied as described, then normalised: the float batch a training step takes.

        `mirrored` (a bool per image) fixes which images are flipped (alternate_flip)."""
        x = random_crop_flip(
            images,
            self.crop_padding,
            self.flip,
            generator,
            reflect=self.reflect,
            mirrored=mirrored,
            size=self.crop_size(epochs_done),
        )
        if not (self.color_jitter or self.cutout or self.random_erasing):
            return normalize(x, channels_last)  # the common case: one multiply-add from uint8
        x = x.float() / 255.0
        if self.color_jitter:
            x = color_jitter(x, self.color_jitter, generator)
        mean, std = normalize.constants(x.device)
        if self.cutout:
            x = cutout(x, self.cutout, generator, fill=mean)
        if self.random_erasing:
            x = random_erasing(x, self.random_erasing, generator, mean=mean, std=std)
        return normalize.from_unit(x, channels_last)


def random_crop_flip(
    images: torch.Tensor,
    padding: int,
    flip: bool,
    generator: torch.Generator,
    *,
    reflect: bool = False,
    mirrored: torch.Tensor | None = None,
    size: int = 0,
) -> torch.Tensor:
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
            offsets = torch.stack(
                [torch.randint(0, room + 1, (b,), generator=generator, device=device) for room in (room_y, room_x)],
                dim=1,
            )
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


# Beyond the chapter: the regularizers of a modern recipe, on pixels in [0, 1].


def _boxes(b: int, h: int, w: int, box_h: torch.Tensor, box_w: torch.Tensor, generator, device) -> torch.Tensor:
    """A bool mask [B, 1, H, W]: one box per image of the given sizes, at a random place inside the image."""
    top = (torch.rand(b, generator=generator, device=device) * (h - box_h + 1)).floor().long()
    left = (torch.rand(b, generator=generator, device=device) * (w - box_w + 1)).floor().long()
    ys, xs = torch.arange(h, device=device), torch.arange(w, device=device)
    inside_y = (ys[None, :] >= top[:, None]) & (ys[None, :] < (top + box_h)[:, None])
    inside_x = (xs[None, :] >= left[:, None]) & (xs[None, :] < (left + box_w)[:, None])
    return (inside_y[:, :, None] & inside_x[:, None, :])[:, None]


def cutout(x: torch.Tensor, size: int, generator: torch.Generator, fill: torch.Tensor | float = 0.0) -> torch.Tensor:
    """DeVries & Taylor (2017): one size x size square per image set to `fill`, the mean colour (so that
    it is 0 once normalised). The square lies fully inside the image, so every image loses the same area."""
    b, _, h, w = x.shape
    side = torch.full((b,), min(size, h, w), device=x.device, dtype=torch.long)
    return torch.where(_boxes(b, h, w, side, side, generator, x.device), torch.as_tensor(fill, dtype=x.dtype), x)


def random_erasing(
    x: torch.Tensor,
    probability: float,
    generator: torch.Generator,
    mean=0.0,
    std=1.0,
    area=(0.02, 0.33),
    log_ratio=(-1.2040, 1.2040),
) -> torch.Tensor:
    """Zhong et al. (2017): with `probability`, a box of random area (2-33%) and aspect (0.3-3.3)
    per image, filled with normal noise of the data's `mean` and `std` (standard normal once
    normalised: timm's 'pixel' mode)."""
    b, c, h, w = x.shape
    rand = lambda: torch.rand(b, generator=generator, device=x.device)
    share = area[0] + (area[1] - area[0]) * rand()
    ratio = torch.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * rand())
    box_h = (share * h * w * ratio).sqrt().round().long().clamp(1, h)
    box_w = (share * h * w / ratio).sqrt().round().long().clamp(1, w)
    mask = _boxes(b, h, w, box_h, box_w, generator, x.device) & (rand() < probability)[:, None, None, None]
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * std + mean
    return torch.where(mask, noise, x)


def color_jitter(x01: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation, each scaled by a factor from [1 - strength, 1 + strength]
    drawn per image (torchvision's ColorJitter(s, s, s) without the hue), on pixels in [0, 1]."""
    b = x01.shape[0]
    factor = lambda: (1 + strength * (2 * torch.rand(b, generator=generator, device=x01.device) - 1)).view(b, 1, 1, 1)
    gray = lambda img: 0.299 * img[:, 0:1] + 0.587 * img[:, 1:2] + 0.114 * img[:, 2:3]
    x = (x01 * factor()).clamp(0, 1)  # brightness
    mean = gray(x).mean(dim=(2, 3), keepdim=True)
    x = (mean + factor() * (x - mean)).clamp(0, 1)  # contrast
    g = gray(x)
    return (g + factor() * (x - g)).clamp(0, 1)  # saturation


def mix(
    x: torch.Tensor, y: torch.Tensor, mixup: float, cutmix: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
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
