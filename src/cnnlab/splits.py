"""Statistics and splits of a dataset's training images: per-channel mean and std, seeded stratified
and group-aware hold-outs, and the count-or-fraction values that ask for them."""

from __future__ import annotations

import re

import torch

from .errors import UsageError
from .recipe import count_or_fraction


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std over every pixel of uint8 images [N, 3, H, W], in [0, 1] units."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = (total_sq / n - mean * mean).clamp_min(0).sqrt()
    return tuple(round(float(v) / 255, 4) for v in mean), tuple(round(float(v) / 255, 4) for v in std)


def parse_count(value: str | float | int | None, total: int, what: str) -> int:
    """count_or_fraction(value) as a number of the `total` images: at least 1 and fewer than all (0 = none)."""
    spec = count_or_fraction(value, what)
    if spec == 0:
        return 0
    count = spec if isinstance(spec, int) else round(spec * total)
    if not 0 < count < total:
        raise UsageError(
            f"{what} {value} does not fit the {total} training images; give a count from 1 to {total - 1} "
            "or a fraction between 0 and 1",
            parameters=(what,),
        )
    return count


def group_of(path: str, pattern: str) -> str | None:
    """The group of an image from its path in the source (train/<class>/...): with `folder`, the first
    subfolder inside the class folder; otherwise the first match of the regular expression `pattern`
    over the path below train/ (its first capture group if it has one). None when nothing matches."""
    below_split = path.split("/", 1)[1] if "/" in path else path
    if pattern == "folder":
        parts = below_split.split("/")
        return parts[1] if len(parts) > 2 else None
    match = re.search(pattern, below_split)
    if match is None:
        return None
    return match.group(1) if match.re.groups else match.group(0)


G = ("val_groups",)


def path_groups(files: list[str] | None, pattern: str) -> list[str]:
    """The group of each training image from its path, by the val_groups `pattern` (see group_of); every
    image needs one."""
    if not files:
        raise UsageError(
            "val_groups needs an image-folder source (it groups images by their file paths); "
            "this source has no file paths",
            parameters=G,
        )
    try:
        re.compile(pattern)
    except re.error as e:
        raise UsageError(f"val_groups {pattern!r} is not a valid regular expression ({e})", parameters=G) from None
    groups = [group_of(f, pattern) for f in files]
    unmatched = [f for f, g in zip(files, groups) if g is None]
    if unmatched:
        how = "has no subfolder inside its class folder" if pattern == "folder" else f"does not match {pattern!r}"
        raise UsageError(
            f"val_groups: {len(unmatched)} training images have no group ({unmatched[0]} {how}); every image needs one",
            parameters=G,
        )
    return groups


def group_take(groups: list[str], count: int, seed: int, what: str = "val_groups") -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out whole groups (sessions, patients, scenes): every image of a group lands on one side.

    `groups` names each image's group; the same name in two classes is one group (a session that
    photographed several classes stays together). Groups are taken in a seeded random order until at
    least `count` images are held out. Returns (taken, rest), both sorted; `what` names the groups'
    origin in errors.
    """
    names = sorted(set(groups))
    if len(names) < 2:
        raise UsageError(f"{what} puts every image in one group ({names[0]}); a split needs at least two", parameters=G)
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    taken: list[int] = []
    for k in order:
        if len(taken) >= count:
            break
        taken.extend(members[names[k]])
    if len(taken) >= len(groups):
        raise UsageError(
            f"{what}: holding out {count} images takes every group; ask for fewer with val_split",
            parameters=("val_groups", "val_split"),
        )
    taken_t = torch.tensor(sorted(taken), dtype=torch.long)
    mask = torch.ones(len(groups), dtype=torch.bool)
    mask[taken_t] = False
    return taken_t, mask.nonzero().flatten()


def stratified_take(labels: torch.Tensor, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick `count` indices with each class in proportion (largest remainder); return (taken, rest).

    Both are sorted, and depend only on `labels`, `count` and `seed`.
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    classes, sizes = torch.unique(labels, return_counts=True)
    exact = sizes.double() * count / len(labels)
    quota = exact.floor().long()
    shortfall = count - int(quota.sum())
    if shortfall:
        quota[torch.argsort(exact - quota, descending=True, stable=True)[:shortfall]] += 1
    taken = []
    for c, q in zip(classes.tolist(), quota.tolist()):
        taken.append(order[labels[order] == c][:q])
    taken = torch.cat(taken).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[taken] = False
    return taken, mask.nonzero().flatten()
