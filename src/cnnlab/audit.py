"""Leak audit: exact and near-duplicate images between the training and test splits, and within each.

Exact duplicates share their decoded pixels (a hash of the uint8 array). Near duplicates are the
nearest neighbours in one of three spaces, above a stated similarity:

- `aligned` (the default): the pair's best normalised cross-correlation once shifted, mirrored and
  zoomed into alignment, found by a multi-view search of pixel features (align.py). It finds copies
  that were recropped, rescaled or mirrored, which both feature spaces below miss.
- `pixels` (the fast baseline, cosine similarity): each image shrunk to 8x8 by area averaging, each
  channel's mean removed, scaled to unit length. Shrinking absorbs one-pixel shifts and re-encoding
  noise; removing the means absorbs brightness and colour casts.
- `model` (cosine similarity): the penultimate features (the head's input) of a trained cnnlab model,
  unit length.
  Stronger: it also pairs a crop or a re-shot of the same object.

Barz & Denzler (2020, "Do we train on test data?") found near-duplicates in the training set for
3.3% of the CIFAR-10 test images, by nearest neighbours in a CNN's feature space, judged by people.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .data import Dataset

# The similarity at or above which two images count as near duplicates, per space, chosen on the real
# CIFAR-10 JPEG data (BENCHMARKS.md, "Leak audit" and "Leak audit II"):
# aligned (benchmarks/audit_recall.py): 96-100% of the planted copies of each kind are found at 0.75; in
# galleries of real test/train pairs judged by eye about 10 of 24 at 0.75-0.78 are the same photograph,
# about 21 of 24 at 0.78-0.85.
# pixels (benchmarks/audit_threshold.py): a training image against a copy of itself shifted one pixel,
# 10% brighter or darker and re-encoded scores a median 0.96; 2.4% of test images have a training
# neighbour at 0.95 or above.
# model: a classifier's pooled features put whole classes close together (the median test image's
# nearest training image scores 0.94), so only near-identical pairs stand out, at 0.99.
THRESHOLDS = {"aligned": 0.75, "pixels": 0.95, "model": 0.99}
CHUNK = 1024  # query rows per similarity block: 1024 x 50,000 floats = 200 MB


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    x = F.adaptive_avg_pool2d(images.float(), 8)
    return (x - x.mean(dim=(2, 3), keepdim=True)).flatten(1)


def unit_rows(features: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Centred on the training set's mean feature, then unit length: cosine similarity then measures how
    two images differ from the typical image alike (without centring, non-negative features such as a
    network's pooled activations all point the same way and every pair looks similar)."""
    return F.normalize(features - center, dim=1)


@torch.no_grad()
def model_features(model: torch.nn.Module, images: torch.Tensor, mean, std, batch: int = 250) -> torch.Tensor:
    """The input of the model's head (its last Linear layer) for every image."""
    from .loader import Normalizer
    from .models import head

    _, linear = head(model)
    captured = []
    hook = linear.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach().float()))
    normalize = Normalizer(tuple(mean), tuple(std))
    model.eval()
    try:
        for start in range(0, len(images), batch):
            model(normalize(images[start : start + batch]))
    finally:
        hook.remove()
    return torch.cat(captured).flatten(1)


def similarity_blocks(query: torch.Tensor, base: torch.Tensor, same: bool = False):
    """Cosine similarities of CHUNK query rows at a time with every base row; with `same` (query is
    base), an image's similarity with itself is -2, so it is never its own neighbour."""
    for start in range(0, len(query), CHUNK):
        block = query[start : start + CHUNK] @ base.T
        if same:
            rows = torch.arange(len(block))
            block[rows, rows + start] = -2.0
        yield block


def nearest(query: torch.Tensor, base: torch.Tensor, same: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query row, the most similar base row: (similarity, index)."""
    best = [block.max(dim=1) for block in similarity_blocks(query, base, same)]
    return torch.cat([b.values for b in best]), torch.cat([b.indices for b in best])


def pixel_hashes(images: torch.Tensor) -> list[str]:
    array = images.contiguous().numpy()
    return [hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest() for a in array]


@dataclass
class Pair:
    kind: str  # test-train, train-train or test-test
    split_a: str
    index_a: int
    split_b: str
    index_b: int
    similarity: float
    exact: bool


@dataclass
class Audit:
    space: str
    threshold: float
    pairs: list[Pair]  # every pair at or above the threshold, most similar first
    closest_cross: list[Pair]  # each test image's nearest training image, most similar first
    counts: dict = field(default_factory=dict)
    leaked_test: list[int] = field(default_factory=list)  # test indices with a near duplicate in train


def audit(data: Dataset, space: str = "aligned", threshold: float | None = None, features=None) -> Audit:
    """Audit `data` in `space` ("aligned", "pixels" or "model"); `features(images) -> [N, D]` overrides
    the feature space's own features (the model space passes the run's)."""
    threshold = THRESHOLDS[space] if threshold is None else threshold
    find = _aligned_search(data) if space == "aligned" else _feature_search(data, features or pixel_features)
    train_h, test_h = pixel_hashes(data.train_images), pixel_hashes(data.test_images)
    train_set = {}
    for i, h in enumerate(train_h):
        train_set.setdefault(h, i)

    cross_sim, cross_idx = find("test", "train")
    closest = []
    for i, (s, j) in enumerate(zip(cross_sim.tolist(), cross_idx.tolist())):
        exact = test_h[i] in train_set
        if exact:  # the identical image wins over whatever the features found
            j, s = train_set[test_h[i]], 1.0
        closest.append(Pair("test-train", "test", i, "train", j, s, exact))
    closest.sort(key=lambda p: -p.similarity)
    pairs = [p for p in closest if p.similarity >= threshold or p.exact]

    within = {}
    for split, hashes in (("train", train_h), ("test", test_h)):
        sim, idx = find(split, split)
        found = set()
        for i, (s, j) in enumerate(zip(sim.tolist(), idx.tolist())):
            if s >= threshold:
                found.add((min(i, j), max(i, j), s))
        first_seen, exact_pairs = {}, set()
        for i, h in enumerate(hashes):
            if h in first_seen:
                exact_pairs.add((first_seen[h], i))
            else:
                first_seen[h] = i
        by_pair = {(a, b): s for a, b, s in found}
        for a, b in exact_pairs:
            by_pair[(a, b)] = 1.0
        split_pairs = [
            Pair(f"{split}-{split}", split, a, split, b, s, (a, b) in exact_pairs) for (a, b), s in by_pair.items()
        ]
        pairs.extend(split_pairs)
        within[split] = {"exact_pairs": len(exact_pairs), "near_pairs": len(split_pairs)}
    pairs.sort(key=lambda p: (-p.similarity, p.kind, p.index_a, p.index_b))

    leaked = sorted(p.index_a for p in closest if p.similarity >= threshold or p.exact)
    counts = {
        "test_images": len(test_h),
        "train_images": len(train_h),
        "test_with_exact_train_duplicate": sum(p.exact for p in closest),
        "test_with_near_train_duplicate": len(leaked),
        "test_with_near_train_duplicate_percent": 100.0 * len(leaked) / max(1, len(test_h)),
        "within_train": within["train"],
        "within_test": within["test"],
    }
    return Audit(space, threshold, pairs, closest, counts, leaked)


def _feature_search(data: Dataset, featurize):
    """find(query split, base split) -> each query image's nearest base image by cosine similarity."""
    train_f, test_f = featurize(data.train_images), featurize(data.test_images)
    center = train_f.mean(dim=0)
    features = {"train": unit_rows(train_f, center), "test": unit_rows(test_f, center)}
    return lambda query, base: nearest(features[query], features[base], same=query == base)


def _aligned_search(data: Dataset):
    """find(query split, base split) -> each query image's best-aligned base image (align.py). Within a
    split the search skips the zoomed views: a recrop matters most across the splits, and the 50,000 x
    50,000 search of the training set with every view would take several times as long."""
    from .align import ZOOMS, aligned_nearest

    images = {"train": data.train_images, "test": data.test_images}
    center = pixel_features(data.train_images).mean(dim=0)
    return lambda query, base: aligned_nearest(
        images[query], images[base], center, same=query == base, zooms=ZOOMS if query != base else (1.0,)
    )


GALLERY_PAIRS = 32


def save_audit(
    result: Audit, data: Dataset, folder, model_run: str | None = None, model_weights: str | None = None
) -> dict:
    """Write audit.json (counts, settings, leaked test indices), pairs.csv (every pair at the threshold,
    most similar first), nearest_train.csv (each test image's closest training image, to re-threshold
    by hand), gallery.png (the closest test/train pairs) and gallery_threshold.png (pairs either side of
    the threshold, to judge it). Returns the summary written to audit.json."""
    import json
    from pathlib import Path

    from .runs import atomic_write_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "pairs.csv", _pairs_csv(result.pairs, data))
    atomic_write_bytes(folder / "nearest_train.csv", _pairs_csv(result.closest_cross, data))
    closest = result.closest_cross[:GALLERY_PAIRS]
    _gallery(
        closest,
        data,
        folder / "gallery.png",
        f"the {GALLERY_PAIRS} closest test (left) / train (right) pairs, {result.space} features",
    )
    above = [p for p in result.closest_cross if p.similarity >= result.threshold and not p.exact][-GALLERY_PAIRS // 2 :]
    below = [p for p in result.closest_cross if p.similarity < result.threshold][: GALLERY_PAIRS // 2]
    _gallery(
        above + below,
        data,
        folder / "gallery_threshold.png",
        f"pairs either side of the threshold {result.threshold} (first {len(above)} count as duplicates)",
    )
    summary = {
        "source": data.source,
        "checksum": data.checksum,
        "space": result.space,
        "model_run": model_run,
        "model_weights": model_weights,
        "threshold": result.threshold,
        "counts": result.counts,
        "pairs": len(result.pairs),
        "leaked_test": result.leaked_test,
    }
    atomic_write_bytes(folder / "audit.json", json.dumps(summary, indent=1).encode())
    return summary


def _images(data: Dataset, split: str):
    return (data.train_images, data.train_labels) if split == "train" else (data.test_images, data.test_labels)


def _pairs_csv(pairs: list[Pair], data: Dataset) -> bytes:
    """Ranked pairs, each image named by its file path (or split[index]) with its class."""
    import csv
    import io

    label_of = lambda split, i: data.classes[int(_images(data, split)[1][i])]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "kind", "image_a", "class_a", "image_b", "class_b", "similarity", "exact"])
    for rank, p in enumerate(pairs, 1):
        writer.writerow(
            [
                rank,
                p.kind,
                data.image_name(p.split_a, p.index_a),
                label_of(p.split_a, p.index_a),
                data.image_name(p.split_b, p.index_b),
                label_of(p.split_b, p.index_b),
                f"{p.similarity:.5f}",
                int(p.exact),
            ]
        )
    return buffer.getvalue().encode()


def _gallery(pairs: list[Pair], data: Dataset, path, title: str) -> None:
    """The pairs side by side, for a person to judge (nothing when there are none)."""
    from .plots import plot_duplicate_pairs

    if not pairs:
        return
    a = torch.stack([_images(data, p.split_a)[0][p.index_a] for p in pairs])
    b = torch.stack([_images(data, p.split_b)[0][p.index_b] for p in pairs])
    captions = [
        f"{'=' if p.exact else f'{p.similarity:.3f}'} {data.image_name(p.split_a, p.index_a)} | "
        f"{data.image_name(p.split_b, p.index_b)}"
        for p in pairs
    ]
    plot_duplicate_pairs(a, b, captions, path, title)


def format_audit(summary: dict) -> str:
    c = summary["counts"]
    return "\n".join(
        [
            f"leak audit of {summary['source']} ({summary['space']} features, "
            f"{'aligned correlation' if summary['space'] == 'aligned' else 'cosine similarity'} "
            f">= {summary['threshold']})",
            f"  test images with an exact duplicate in train: {c['test_with_exact_train_duplicate']}",
            f"  test images with a near duplicate in train:   {c['test_with_near_train_duplicate']} "
            f"of {c['test_images']} ({c['test_with_near_train_duplicate_percent']:.2f}%)",
            f"  pairs within train: {c['within_train']['near_pairs']} ({c['within_train']['exact_pairs']} exact); "
            f"within test: {c['within_test']['near_pairs']} ({c['within_test']['exact_pairs']} exact)",
        ]
    )


def load_audit(folder, data: Dataset) -> dict:
    """An audit folder's summary, checked against the data it is applied to."""
    from pathlib import Path

    from .errors import CnnlabError
    from .names import shown
    from .runfiles import read_json

    path = Path(folder) / "audit.json" if Path(folder).is_dir() else Path(folder)
    if not path.exists():
        raise CnnlabError(f"{shown(folder)}: not a cnnlab audit (no audit.json); run `cnnlab audit --data ...` first")
    summary = read_json(path, "run `cnnlab audit --data ...` again")
    leaked = summary.get("leaked_test")
    if not isinstance(leaked, list) or not isinstance(summary.get("source", ""), str):
        raise CnnlabError(
            f"{shown(path)} is damaged (no list of leaked test images); run `cnnlab audit --data ...` again"
        )
    if summary.get("checksum") and data.checksum and summary["checksum"] != data.checksum:
        raise CnnlabError(f"{shown(folder)} audits other data ({summary['source']}); audit the data you evaluate on")
    if any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(data.test_labels) for i in leaked):
        raise CnnlabError(f"{folder}: its test indices do not fit this test split of {len(data.test_labels)} images")
    return summary
