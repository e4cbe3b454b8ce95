"""Python-format CIFAR batches: the canonical archives and torchvision's folders, read without unpickling
anything but arrays, lists and numbers."""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
import torch

from .download import CIFAR_ARCHIVES
from .errors import CnnlabError, brief
from .names import shown
from .sourcefiles import SourceFile, read_files

if TYPE_CHECKING:
    from .data import Dataset


class _CifarUnpickler(pickle.Unpickler):
    """The CIFAR batches are pickles; allow only what they contain, so a hostile file can't run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def find_cifar_folder(path: Path) -> Path | None:
    for candidate in (path, *(path / a.folder for a in CIFAR_ARCHIVES.values())):
        if (candidate / "data_batch_1").is_file() or (
            (candidate / "train").is_file() and (candidate / "meta").is_file()
        ):
            return candidate
    return None


def folder_opener(folder: Path) -> Callable[[str], bytes]:
    def read(name: str) -> bytes:
        path = folder / name
        if not path.is_file():
            raise CnnlabError(
                f"{folder} has no '{name}': the CIFAR batches are incomplete; delete the folder and download again"
            )
        return path.read_bytes()

    return read


CIFAR_BATCH_NAMES = {"batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6)), "meta", "train", "test"}


def archive_opener(archive: Path, files: list[SourceFile]) -> Callable[[str], bytes]:
    """Read the CIFAR batch files of an archive in one pass, without unpacking it to disk."""
    wanted = {f.name for f in files if f.rel.name in CIFAR_BATCH_NAMES}
    contents = {PurePosixPath(name).name: data for name, data in read_files(archive, wanted)}

    def read(name: str) -> bytes:
        if name not in contents:
            raise CnnlabError(f"{shown(archive)} has no '{name}': it is not a complete CIFAR archive")
        return contents[name]

    return read


def read_cifar(source: str, read: Callable[[str], bytes], description: str) -> Dataset:
    def unpickle(name: str) -> dict:
        try:
            return _CifarUnpickler(io.BytesIO(read(name)), encoding="latin1").load()
        except CnnlabError:
            raise
        except Exception as e:  # any unpickling failure means a damaged or foreign file
            raise CnnlabError(
                f"{description}: '{name}' is not a readable CIFAR batch ({brief(e)}); download the data again"
            ) from None

    def images_labels(batches: list[dict], key: str) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            x = np.concatenate([np.asarray(b["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for b in batches])
            y = np.concatenate([np.asarray(b[key], dtype=np.int64) for b in batches])
        except (KeyError, ValueError, TypeError) as e:
            raise CnnlabError(
                f"{description}: a CIFAR batch has unexpected contents ({brief(e)}); download the data again"
            ) from None
        if len(x) != len(y):
            raise CnnlabError(
                f"{description}: a CIFAR batch has {len(x)} images but {len(y)} labels; download the data again"
            )
        return torch.from_numpy(x), torch.from_numpy(y)

    try:
        meta = unpickle("batches.meta")
        train = [unpickle(f"data_batch_{i}") for i in range(1, 6)]
        test = [unpickle("test_batch")]
        key, classes = "labels", list(meta["label_names"])
    except CnnlabError as first_error:
        try:  # CIFAR-100 keeps its batches as 'train', 'test' and 'meta'
            meta = unpickle("meta")
            train, test = [unpickle("train")], [unpickle("test")]
            key, classes = "fine_labels", list(meta["fine_label_names"])
        except CnnlabError:
            raise first_error from None
    tx, ty = images_labels(train, key)
    vx, vy = images_labels(test, key)
    digest = hashlib.sha256(
        tx.numpy().tobytes()[: 1 << 20] + vx.numpy().tobytes()[: 1 << 20] + ty.numpy().tobytes()
    ).hexdigest()
    _check_labels(description, ty, vy, len(classes))
    from .data import Dataset

    return Dataset(source, classes, tx, ty, vx, vy, checksum=f"sha256:{digest}")


def _check_labels(description: str, train_y: torch.Tensor, test_y: torch.Tensor, num_classes: int) -> None:
    for y in (train_y, test_y):
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise CnnlabError(f"{description}: labels fall outside the {num_classes} classes; the data is damaged")
