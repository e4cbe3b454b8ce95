"""Image-folder trees: train/<class>/<file>, test/<class>/<file>, optionally under one top folder, read
from a folder or from a .tar, .tar.gz or .zip of one, and decoded into a Dataset.

The layouts people have: a val/ (or valid/) folder beside train/ is the validation split (kept with the
training images, named val/..., and held out by prepare.split_images); a tree with train/ alone gets a
test split carved from it: CARVED_TEST_FRACTION of each class, seeded, said so in the data's summary."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import CnnlabError
from .images import IMAGE_EXTENSIONS, decode_image
from .labelfile import check_classes, match_files, read_labels
from .names import portable, shown
from .sourcefiles import SourceFile, read_files
from .splits import group_take, stratified_take

if TYPE_CHECKING:
    from .data import Dataset

SPLITS = ("train", "test")
VAL_FOLDERS = ("val", "valid")  # either name: the given validation split
CARVED_TEST_FRACTION, CARVED_TEST_SEED = 0.2, 0  # a train-only tree's test split
NOT_DATA = ("readme.md", "readme.txt", "license", "license.txt")
DECODE_CHUNK = 128  # images per decoding task
DECODE_AHEAD = 8  # tasks in flight per thread: bounds the archive bytes held while decoding


@dataclass(frozen=True)
class TreeImage:
    split: str
    cls: str  # class name as people read it (names.portable: valid Unicode whatever the bytes)
    rel: str  # train/<class>/.../<image>, without a wrapping folder (portable too)
    name: str  # the file's own name inside the source, for reading it
    group: str | None = None  # from a labels file's group column


def plan_tree(files: list[SourceFile], description: str) -> list[TreeImage]:
    """Where each file belongs: split and class from its path; anything that is not an image of a class
    folder is an error naming it (hidden files, macOS litter and README/LICENSE files are skipped)."""
    images, seen = [], set()
    for file in files:
        if file.name in seen:
            raise CnnlabError(f"{description}: '{shown(file.name)}' appears twice in the archive; keep one copy")
        seen.add(file.name)
        parts = [p for p in file.rel.parts if p]
        known = (*SPLITS, *VAL_FOLDERS)
        if parts and parts[0] not in known and len(parts) > 1:
            parts = parts[1:]  # a single wrapping folder, as when a tree is zipped by its parent
        if len(parts) < 3 or parts[0] not in known:
            if parts and parts[-1].lower() in NOT_DATA:
                continue
            raise CnnlabError(
                f"{description}: unexpected file '{shown(file.name)}'; an image folder holds "
                "train/<class>/<image>, optionally val/<class>/<image> and test/<class>/<image>"
            )
        if not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
            raise CnnlabError(
                f"{description}: '{shown(file.name)}' is not an image ({', '.join(IMAGE_EXTENSIONS)}); "
                "remove it from the folder"
            )
        split = "val" if parts[0] in VAL_FOLDERS else parts[0]
        images.append(TreeImage(split, portable(parts[1]), portable("/".join(parts)), file.name))
    if not any(i.split == "train" for i in images):
        raise CnnlabError(f"{description}: no images under train/; an image folder needs train/<class>/<image>")
    train_classes = sorted({i.cls for i in images if i.split == "train"})
    val_classes = sorted({i.cls for i in images if i.split == "val"})
    if set(val_classes) - set(train_classes):
        raise CnnlabError(
            f"{description}: val/ has classes that train/ has not ({sorted(set(val_classes) - set(train_classes))}); "
            "give val/ only class folders of train/"
        )
    test_classes = sorted({i.cls for i in images if i.split == "test"}) or train_classes  # none: carved
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise CnnlabError(
            f"{description}: train and test have different classes (only in train: {only_train or 'none'}, "
            f"only in test: {only_test or 'none'}); give both splits the same class folders"
        )
    return sorted(images, key=lambda i: i.rel)


def plan_labelled(files: list[SourceFile], labels: Path, description: str) -> list[TreeImage]:
    """Split, class and group of each image a labels file names (labelfile.py); its name in the run is
    <split>/<path>, so a val row reads as val/... like an image of a val/ folder."""
    rows = read_labels(labels)
    labels_name = shown(labels)
    names = match_files(rows, files, description, labels_name)
    check_classes(rows, labels_name)
    images = [
        TreeImage(row.split, portable(row.label), portable(f"{row.split}/{row.path}"), name, row.group)
        for row, name in zip(rows, names)
    ]
    return sorted(images, key=lambda i: i.rel)


def decode_tree(path: Path, images: list[TreeImage], size: int) -> list[np.ndarray]:
    """Each image decoded to uint8 [size, size, 3], in the order of `images`. Archive members are read in
    one pass and decoded in chunks by a pool of threads (Pillow releases the GIL while decoding, so they
    use every core); at most DECODE_AHEAD chunks per thread wait, so memory stays bounded whatever the
    archive holds."""
    position = {image.name: k for k, image in enumerate(images)}
    decoded: list[np.ndarray | None] = [None] * len(images)
    workers = os.cpu_count() or 1

    def decode_chunk(chunk):
        return [(k, decode_image(source, shown(images[k].rel), size)) for k, source in chunk]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        waiting: deque = deque()
        chunk = []
        for name, source in read_files(path, set(position)):
            chunk.append((position[name], source))
            if len(chunk) == DECODE_CHUNK:
                waiting.append(pool.submit(decode_chunk, chunk))
                chunk = []
            while len(waiting) > DECODE_AHEAD * workers:
                for k, array in waiting.popleft().result():
                    decoded[k] = array
        waiting.append(pool.submit(decode_chunk, chunk))
        for task in waiting:
            for k, array in task.result():
                decoded[k] = array
    missing = [images[k].rel for k, array in enumerate(decoded) if array is None]
    if missing:
        raise CnnlabError(
            f"{shown(path)}: '{shown(missing[0])}' was listed but could not be read back (did the source "
            "change while it was read?); try again"
        )
    return decoded


def read_image_tree(path: Path, files: list[SourceFile], size: int, labels: Path | None = None) -> Dataset:
    """Decode the image tree that `files` (listed from `path`) form, or with `labels` the images a labels
    file names."""
    from .data import Dataset

    description = shown(path)
    images = plan_labelled(files, labels, description) if labels else plan_tree(files, description)
    arrays = decode_tree(path, images, size)
    classes = sorted({i.cls for i in images})
    index = {c: k for k, c in enumerate(classes)}
    members = {
        split: [k for k, image in enumerate(images) if image.split == split] for split in ("train", "val", "test")
    }
    if not members["test"]:  # train/ alone: a seeded, stratified share of each class becomes the test split
        train = torch.tensor(members["train"])
        labels = torch.tensor([index[images[k].cls] for k in members["train"]])
        count = max(1, round(CARVED_TEST_FRACTION * len(train)))
        if count >= len(train):
            raise CnnlabError(f"{description}: {len(train)} training image(s) are too few to carve a test split from")
        if images[0].group is not None:  # whole groups, so no patient or session straddles train and test
            groups = [images[k].group for k in members["train"]]
            taken, kept = group_take(groups, count, CARVED_TEST_SEED, "the labels file's groups")
        else:
            taken, kept = stratified_take(labels, count, CARVED_TEST_SEED)
        members["test"], members["train"] = train[taken].tolist(), train[kept].tolist()

    def tensors(ks: list[int]):
        x = torch.from_numpy(np.stack([arrays[k] for k in ks])).permute(0, 3, 1, 2).contiguous()
        return x, torch.tensor([index[images[k].cls] for k in ks], dtype=torch.int64), [images[k].rel for k in ks]

    # The given val/ images travel with the training images, after them; their names (val/...) mark them.
    in_train = members["train"] + members["val"]
    tx, ty, train_files = tensors(in_train)
    vx, vy, test_files = tensors(members["test"])
    groups = [images[k].group for k in in_train] if images[0].group is not None else None
    return Dataset(
        str(path), classes, tx, ty, vx, vy, "", train_files=train_files, test_files=test_files, train_groups=groups
    )
