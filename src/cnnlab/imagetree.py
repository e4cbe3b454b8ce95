"""Image-folder trees: train/<class>/<file>, test/<class>/<file>, optionally under one top folder, read
from a folder or from a .tar, .tar.gz or .zip of one, and decoded into a Dataset."""

from __future__ import annotations

import os
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch

from .download import check_member_name
from .errors import CnnlabError, brief
from .images import IMAGE_EXTENSIONS, decode_image

if TYPE_CHECKING:
    from .data import Dataset

# Image-folder trees: train/<class>/<file>, test/<class>/<file>, optionally under one top folder

# A file is (relative path inside the tree, a function returning its bytes).
FileEntry = tuple[PurePosixPath, Callable[[], bytes]]


def dir_files(root: Path) -> Iterator[FileEntry]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            yield PurePosixPath(full.relative_to(root).as_posix()), full.read_bytes


def archive_members(path: Path) -> list[str]:
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [i.filename for i in zf.infolist() if not i.is_dir()]
        elif tarfile.is_tarfile(path):
            with tarfile.open(path) as tf:
                names = [m.name for m in tf.getmembers() if m.isfile()]
        else:
            raise CnnlabError(f"{path} is neither a folder nor a .tar, .tar.gz or .zip archive; give an image folder or an archive of one")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise CnnlabError(f"{path} is not a readable archive ({brief(e)}); copy or download it again") from None
    for name in names:
        check_member_name(path, name)
    return names


def archive_files(path: Path) -> Iterator[FileEntry]:
    """Every regular file of a tar or zip, read in one sequential pass (gzip cannot seek cheaply).

    Member names are checked as they are read; nothing is written to disk, so a bad name found
    partway through only ends the read.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if not info.is_dir():
                        check_member_name(path, info.filename)
                        data = zf.read(info)
                        yield PurePosixPath(info.filename), (lambda d=data: d)
        else:
            with tarfile.open(path, mode="r|*") as tf:
                for member in tf:
                    if member.isfile():
                        check_member_name(path, member.name)
                        data = tf.extractfile(member).read()
                        yield PurePosixPath(member.name), (lambda d=data: d)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise CnnlabError(f"{path} is not a readable archive ({brief(e)}); copy or download it again") from None


def read_image_tree(files: Iterator[FileEntry], description: str, size: int) -> Dataset:
    """Collect train/test class folders from `files` and decode every image."""
    splits: dict[str, list[tuple[str, str, Callable[[], bytes]]]] = {"train": [], "test": []}
    for rel, read in files:
        parts = [p for p in rel.parts if p]
        if any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue  # hidden files and macOS archive litter are not data
        if parts and parts[0] not in splits and len(parts) > 1:
            parts = parts[1:]  # a single wrapping folder, as when a tree is zipped by its parent
        if len(parts) < 3 or parts[0] not in splits:
            if len(parts) >= 1 and parts[-1].lower() in ("readme.md", "readme.txt", "license", "license.txt"):
                continue
            raise CnnlabError(
                f"{description}: unexpected file '{rel}'; an image folder holds train/<class>/<image> and test/<class>/<image>"
            )
        split, cls, name = parts[0], parts[1], parts[-1]
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            raise CnnlabError(f"{description}: '{rel}' is not an image ({', '.join(IMAGE_EXTENSIONS)}); remove it from the folder")
        rel = PurePosixPath(*parts)  # without a wrapping folder: train/<class>/.../<image>
        splits[split].append((cls, str(rel), read))
    for split, entries in splits.items():
        if not entries:
            raise CnnlabError(f"{description}: no images under {split}/; an image folder needs train/<class>/ and test/<class>/")
    train_classes = sorted({c for c, _, _ in splits["train"]})
    test_classes = sorted({c for c, _, _ in splits["test"]})
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise CnnlabError(
            f"{description}: train and test have different classes (only in train: {only_train or 'none'}, "
            f"only in test: {only_test or 'none'}); give both splits the same class folders"
        )
    index = {c: i for i, c in enumerate(train_classes)}

    def decode_split(entries):
        entries = sorted(entries, key=lambda e: e[1])
        # Pillow releases the GIL while decoding, so threads use every core.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            arrays = list(pool.map(lambda e: decode_image(e[2](), e[1], size), entries, chunksize=256))
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        y = torch.tensor([index[c] for c, _, _ in entries], dtype=torch.int64)
        return x, y, [rel for _, rel, _ in entries]

    tx, ty, train_files = decode_split(splits["train"])
    vx, vy, test_files = decode_split(splits["test"])
    from .data import Dataset

    return Dataset(description, train_classes, tx, ty, vx, vy, checksum="", train_files=train_files, test_files=test_files)
