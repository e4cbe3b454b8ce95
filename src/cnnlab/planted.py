"""Altered copies of images, to plant into a test split as known near duplicates: the ground truth that
the leak audit's recall is measured and its threshold chosen on (benchmarks/audit_recall.py, the tests).

Each kind of alteration is one a copy of a photograph picks up on its way into a dataset: moved a few
pixels, mirrored, recropped and rescaled, recoloured, re-encoded, and combinations of them.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

KINDS = ("shift", "mirror", "crop", "cast", "jpeg", "mirror+crop+jpeg", "shift+cast+jpeg", "crop+cast")


def _shift(x, rng):
    dx, dy = (int(v) * int(rng.choice([-1, 1])) for v in rng.integers(1, 4, 2))
    x = np.roll(x, (dy, dx), axis=(0, 1))
    # what was wrapped round is filled with the edge instead, as a re-shot picture would have new content
    if dy > 0:
        x[:dy] = x[dy]
    elif dy < 0:
        x[dy:] = x[dy - 1]
    if dx > 0:
        x[:, :dx] = x[:, dx : dx + 1]
    elif dx < 0:
        x[:, dx:] = x[:, dx - 1 : dx]
    return x


def _crop(x, rng):
    side = int(rng.integers(24, 29))
    top, left = (int(v) for v in rng.integers(0, 33 - side, 2))
    piece = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)[top : top + side, left : left + side])
    return np.asarray(piece.resize((32, 32), Image.BICUBIC)).astype(np.float64)


def _cast(x, rng):
    return x * rng.uniform(0.8, 1.2, 3) + rng.uniform(-20, 20, 3)


def _jpeg(x, rng):
    buffer = io.BytesIO()
    Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=int(rng.integers(30, 61)))
    return np.asarray(Image.open(buffer).convert("RGB")).astype(np.float64)


STEPS = {"shift": _shift, "mirror": lambda x, rng: x[:, ::-1], "crop": _crop, "cast": _cast, "jpeg": _jpeg}


def altered(images: torch.Tensor, kind: str, seed: int) -> torch.Tensor:
    """Each image altered by the steps named in `kind` ("a+b"), seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for image in images.permute(0, 2, 3, 1).numpy():
        x = image.astype(np.float64)
        for step in kind.split("+"):
            x = STEPS[step](x, rng)
        out.append(np.clip(x, 0, 255).astype(np.uint8))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
