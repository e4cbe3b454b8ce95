"""Datasets: read a source once, keep it in memory as uint8 tensors.

A source is `cifar10`, `cifar100`, or a path: a python-format CIFAR archive or its folder, or an
image-folder tree (`train/<class>/...`, `test/<class>/...`; subfolders inside a class folder, such as
one per collection session, are allowed) as a folder, `.tar`, `.tar.gz` or `.zip`.
Decoded image folders are cached as one `.npz` keyed by the source's content, so the second load
is a file read, not 60,000 JPEG decodes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .cache import cached
from .cifar import archive_opener, find_cifar_folder, folder_opener, read_cifar
from .download import CIFAR_ARCHIVES, ensure_cifar
from .errors import UsageError
from .imagetree import CARVED_TEST_FRACTION, CARVED_TEST_SEED, read_image_tree
from .labelfile import check_labels_file
from .names import shown
from .sourcefiles import list_files, special_kind

# The chapter's constants: precomputed over the canonical CIFAR-10 training set.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
KNOWN_STATS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}


@dataclass
class Dataset:
    """A whole dataset in memory: images are uint8 [N, 3, H, W], labels int64 [N]."""

    source: str
    classes: list[str]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    checksum: str  # identifies the source's content; stored with every run
    known_stats: tuple | None = field(default=None, repr=False)  # published mean/std, if any
    # For image-folder sources: each image's path inside the source (train/<class>/<name>), in order.
    train_files: list[str] | None = field(default=None, repr=False)
    test_files: list[str] | None = field(default=None, repr=False)
    # From a labels file (labelfile.py): its path, and each training image's group when it has a group column.
    labels_file: str | None = field(default=None, repr=False)
    train_groups: list[str] | None = field(default=None, repr=False)
    _grayscale: bool | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.source!r}: {self.num_classes} classes, {len(self.train_labels):,} train and "
            f"{len(self.test_labels):,} test images of {self.image_size}x{self.image_size})"
        )

    def image_name(self, split: str, index: int) -> str:
        """How a person finds the image: its file path in an image folder, else split and index."""
        files = self.train_files if split == "train" else self.test_files
        return files[index] if files else f"{split}[{index}]"

    def first_train_images(self, n: int) -> Dataset:
        """The same dataset with only its first n training images (a quick look, a benchmark's subset); the
        file names and groups stay in step with them."""
        return replace(
            self,
            train_images=self.train_images[:n],
            train_labels=self.train_labels[:n],
            train_files=self.train_files[:n] if self.train_files else None,
            train_groups=self.train_groups[:n] if self.train_groups else None,
            _grayscale=None,
        )

    @property
    def given_val(self) -> torch.Tensor | None:
        """Indices of the training images that came from a val/ (or valid/) folder: the validation split the
        data brings (prepare.split_images holds them out). None when it brings none."""
        if not self.train_files:
            return None
        marked = [k for k, name in enumerate(self.train_files) if name.split("/", 1)[0] in ("val", "valid")]
        return torch.tensor(marked, dtype=torch.long) if marked else None

    @property
    def carved_test(self) -> bool:
        """Whether the test split was carved from train/ (an image folder without test/)."""
        return bool(self.test_files) and all(name.startswith("train/") for name in self.test_files)

    def layout(self) -> dict:
        """Where the validation and test splits come from, in words a config file keeps."""
        given = self.given_val
        layout = {"val": f"the val/ folder ({len(given)} images)" if given is not None else "from --val-split, if any"}
        if self.carved_test:
            layout["test"] = (
                f"carved from train/: {len(self.test_labels)} images, {CARVED_TEST_FRACTION:.0%} of each class, "
                f"seed {CARVED_TEST_SEED}"
            )
        else:
            layout["test"] = "the test split of the source"
        if self.labels_file:
            layout["labels"] = f"classes and splits from {self.labels_file}"
        if self.train_groups:
            layout["groups"] = (
                f"{len(set(self.train_groups))} groups from the labels file's group column, kept whole by "
                "every split cnnlab makes"
            )
        return layout

    @property
    def grayscale(self) -> bool:
        """Whether every image is grey (its three channels equal): colour then carries nothing, so colour
        corruptions are skipped and first-layer filters are read as intensity patterns."""
        if self._grayscale is None:
            from .images import all_grey

            self._grayscale = all_grey(self.train_images) and all_grey(self.test_images)
        return self._grayscale

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])

    def summary(self) -> dict:
        return {
            "source": self.source,
            "checksum": self.checksum,
            "classes": self.classes,
            "train": int(self.train_labels.numel()),
            "test": int(self.test_labels.numel()),
            "image_size": self.image_size,
            "layout": self.layout(),
            "grayscale": self.grayscale,
            **({"labels": self.labels_file} if self.labels_file else {}),
        }


# ---------------------------------------------------------------------------------------------
# Resolving a source


def load_dataset(
    source: str = "cifar10",
    root: str | Path = "data",
    image_size: int = 32,
    mirror: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    labels: str | Path | None = None,
) -> Dataset:
    """Load `source` into memory (see the module docstring for what a source can be); with `labels`, a
    labels file (labelfile.py) says the class, split and group of the source's images."""
    if image_size < 8 or image_size > 512:
        raise UsageError(
            f"image_size {image_size} is out of range; use a size between 8 and 512", parameters=("image_size",)
        )
    if labels is not None:
        return _labelled(source, labels, image_size, cache_dir, progress)
    if source in CIFAR_ARCHIVES:
        folder = ensure_cifar(source, Path(root), mirror=mirror, progress=progress)
        ds = read_cifar(source, folder_opener(folder), source)
        ds.known_stats = KNOWN_STATS[source]
        return _resized(ds, image_size)
    path = Path(source).expanduser()
    if not path.exists():
        if os.sep not in source and "." not in source:
            raise UsageError(
                f"unknown dataset '{shown(source)}': use cifar10, cifar100, or the path of an archive or image folder"
            )
        raise UsageError(
            f"{shown(source)}: no such file or folder; give cifar10, cifar100, or an existing archive or image folder"
        )
    path = path.resolve()  # runs record the absolute path, so later commands find the data from any folder
    kind = special_kind(path.stat().st_mode)
    if kind and kind != "a folder":
        raise UsageError(f"{shown(source)} is {kind}; give an image folder or an archive file")
    return cached(path, image_size, cache_dir, lambda exclude: _read_path(path, image_size, exclude), progress)


def _labelled(source: str, labels: str | Path, image_size: int, cache_dir, progress: bool) -> Dataset:
    """The images of a folder or archive that a labels file names, with its classes, splits and groups."""
    labels_path = Path(labels).expanduser()
    if not labels_path.exists():
        raise UsageError(f"{shown(str(labels))}: no such labels file; give the path of a CSV with path,label rows")
    labels_path = check_labels_file(labels_path.resolve())
    path = Path(source).expanduser()
    if source in CIFAR_ARCHIVES or not path.exists():
        raise UsageError(
            f"--labels labels the images of a folder or archive; {shown(source)} is not one (give --data PATH)"
        )
    path = path.resolve()
    kind = special_kind(path.stat().st_mode)
    if kind and kind != "a folder":
        raise UsageError(f"{shown(source)} is {kind}; give an image folder or an archive file")
    read = lambda exclude: read_image_tree(path, list_files(path, exclude), image_size, labels_path)
    ds = cached(path, image_size, cache_dir, read, progress, labels=labels_path)
    ds.labels_file = str(labels_path)
    return ds


def _read_path(path: Path, image_size: int, exclude: tuple[Path, ...] = ()) -> Dataset:
    """Decode a path source, whichever of the accepted layouts it has."""
    if path.is_dir():
        cifar_folder = find_cifar_folder(path)
        if cifar_folder is not None:
            return _resized(read_cifar(str(path), folder_opener(cifar_folder), str(path)), image_size)
    files = list_files(path, exclude)
    if not path.is_dir():
        basenames = {f.rel.name for f in files}
        if "data_batch_1" in basenames or {"train", "test", "meta"} <= basenames:
            return _resized(read_cifar(str(path), archive_opener(path, files), str(path)), image_size)
    return read_image_tree(path, files, image_size)


def _resized(ds: Dataset, size: int) -> Dataset:
    """A CIFAR-format dataset at another size, resized as images.picture_array resizes pictures: area
    averaging to shrink, bilinear to enlarge."""
    if ds.image_size != size:
        mode = "area" if size < ds.image_size else "bilinear"
        resize = lambda x: (
            torch.nn.functional.interpolate(x.float(), size=size, mode=mode).round().clamp(0, 255).to(torch.uint8)
        )
        ds.train_images, ds.test_images = resize(ds.train_images), resize(ds.test_images)
    return ds
