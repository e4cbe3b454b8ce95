"""Recall of the leak audit on planted copies, and how many real test images it flags.

    python benchmarks/audit_recall.py ../shared/data/cifar10-jpeg.tar.gz [PLANTED_PER_KIND]

Plants altered copies of seeded training images (each kind in cnnlab.planted, PLANTED_PER_KIND of
each, default 200) and asks, for each copy, whether the first stage retrieves its source and what the
aligned similarity scores the pair. For the real test split it counts the test images whose best
training candidate reaches each threshold (what the audit would flag) and saves the scores and
pairs to audit_recall_test.pt, to draw galleries of score bands for judging by eye.
"""

from __future__ import annotations

import sys
import time

import torch

from cnnlab.align import aligned_nearest, aligned_similarity, base_views, candidate_pairs, query_views
from cnnlab.audit import pixel_features
from cnnlab.data import load_dataset
from cnnlab.planted import KINDS, altered


def main(source: str, per_kind: int = 200) -> None:
    torch.manual_seed(0)
    data = load_dataset(source, progress=False)
    train = data.train_images
    center = pixel_features(train).mean(dim=0)
    bases = base_views(train, center)
    thresholds = (0.70, 0.72, 0.75, 0.78, 0.80, 0.85)
    sources = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[: per_kind * len(KINDS)]
    print("kind | retrieved | recall at " + " / ".join(f"{t}" for t in thresholds) + " | median score")
    for n, kind in enumerate(KINDS):
        chosen = sources[n * per_kind : (n + 1) * per_kind]
        copies = altered(train[chosen], kind, seed=n)
        picks = candidate_pairs(query_views(copies, center), bases)
        retrieved = (picks == chosen.unsqueeze(1)).any(dim=1)
        true = aligned_similarity(copies, train[chosen])  # the copy against its own source
        found = [float(((true >= t) & retrieved).float().mean()) for t in thresholds]
        print(
            f"{kind} | {float(retrieved.float().mean()):.3f} | "
            + " / ".join(f"{f:.3f}" for f in found)
            + f" | {float(true.median()):.3f}",
            flush=True,
        )
    started = time.perf_counter()
    best, index = aligned_nearest(data.test_images, train, center)
    print(f"real test split: {time.perf_counter() - started:.1f} s")
    for t in thresholds:
        print(f"  test images at >= {t}: {int((best >= t).sum())}")
    torch.save({"best": best, "index": index}, "audit_recall_test.pt")  # for galleries of score bands


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
