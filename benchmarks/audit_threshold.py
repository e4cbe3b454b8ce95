"""How the audit's default threshold was chosen: the similarity of an image to an altered copy of
itself (what a near duplicate is) against the similarity of each test image to its nearest training
image (almost all of which are not duplicates).

    python benchmarks/audit_threshold.py ../shared/data/cifar10-jpeg.tar.gz [RUN]

With RUN (a trained cnnlab run folder), the model's penultimate features are measured too.
"""

from __future__ import annotations

import io
import sys

import numpy as np
import torch
from PIL import Image

from cnnlab.audit import model_features, nearest, pixel_features, unit_rows
from cnnlab.data import load_dataset


def altered(images: torch.Tensor, kind: str, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    out = []
    for image in images.permute(0, 2, 3, 1).numpy():
        x = image.astype(np.float64)
        if kind in ("shift", "all"):
            x = np.roll(x, int(rng.choice([-1, 1])), axis=int(rng.integers(0, 2)))
        if kind in ("brightness", "all"):
            x = x * rng.uniform(0.9, 1.1)
        x = np.clip(x, 0, 255).astype(np.uint8)
        if kind in ("jpeg", "all"):
            buffer = io.BytesIO()
            Image.fromarray(x).save(buffer, "JPEG", quality=75)
            x = np.asarray(Image.open(buffer).convert("RGB"))
        out.append(x)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def main(source: str, run: str | None = None) -> None:
    data = load_dataset(source, progress=False)
    spaces = {"pixels": pixel_features}
    if run:
        from cnnlab.openrun import load_run

        opened = load_run(run, weights="last")
        spaces["model"] = lambda images: model_features(
            opened.model, images, opened.checkpoint["mean"], opened.checkpoint["std"]
        )
    sample = data.train_images[
        torch.randperm(len(data.train_images), generator=torch.Generator().manual_seed(0))[:2000]
    ]
    for space, features in spaces.items():
        print(f"{space} features")
        train = features(data.train_images)
        center = train.mean(dim=0)
        unit = lambda images: unit_rows(features(images), center)
        base = unit(sample)
        for kind in ("shift", "brightness", "jpeg", "all"):
            similarity = (base * unit(altered(sample, kind))).sum(dim=1)
            q = torch.quantile(similarity, torch.tensor([0.01, 0.05, 0.5]))
            print(f"  image vs its {kind:<10} copy: 1st percentile {q[0]:.4f}, 5th {q[1]:.4f}, median {q[2]:.4f}")
        cross, _ = nearest(unit(data.test_images), unit_rows(train, center))
        q = torch.quantile(cross, torch.tensor([0.5, 0.9, 0.99]))
        print(f"  test image vs nearest train image: median {q[0]:.4f}, 90th percentile {q[1]:.4f}, 99th {q[2]:.4f}")
        for t in (0.90, 0.93, 0.95, 0.97, 0.99):
            print(
                f"    at >= {t}: {int((cross >= t).sum())} test images "
                f"({100 * float((cross >= t).double().mean()):.2f}%)"
            )


if __name__ == "__main__":
    main(*sys.argv[1:3])
