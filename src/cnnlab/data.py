"""Datasets: read a source once, keep it in memory as uint8 tensors.

A source is `cifar10`, `cifar100`, or a path: a python-format CIFAR archive or its folder, or an
image-folder tree (`train/<class>/...`, `test/<class>/...`; subfolders inside a class folder, such as
one per collection session, are allowed) as a folder, `.tar`, `.tar.gz` or `.zip`.
Decoded image folders are cached as one `.npz` keyed by the source's content, so the second load
is a file read, not 60,000 JPEG decodes.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import sys
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import numpy as np
import torch

from .download import CIFAR_ARCHIVES, check_member_name, ensure_cifar, file_digest
from .errors import CnnlabError, UsageError, brief
from .images import IMAGE_EXTENSIONS, decode_image

CACHE_VERSION = 2  # 2: image folders keep their file paths
CACHE_ENV = "CNNLAB_CACHE"

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

    def image_name(self, split: str, index: int) -> str:
        """How a person finds the image: its file path in an image folder, else split and index."""
        files = self.train_files if split == "train" else self.test_files
        return files[index] if files else f"{split}[{index}]"

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
) -> Dataset:
    """Load `source` into memory (see the module docstring for what a source can be)."""
    if image_size < 8 or image_size > 512:
        raise UsageError(f"--image-size {image_size} is out of range; use a size between 8 and 512")
    if source in CIFAR_ARCHIVES:
        folder = ensure_cifar(source, Path(root), mirror=mirror, progress=progress)
        ds = _read_cifar(source, _folder_opener(folder), source)
        ds.known_stats = KNOWN_STATS[source]
        return _resized(ds, image_size)
    path = Path(source).expanduser()
    if not path.exists():
        if os.sep not in source and "." not in source:
            raise UsageError(f"unknown dataset '{source}': use cifar10, cifar100, or the path of an archive or image folder")
        raise UsageError(f"{source}: no such file or folder; give cifar10, cifar100, or an existing archive or image folder")
    path = path.resolve()  # runs record the absolute path, so later commands find the data from any folder
    return _cached(path, image_size, cache_dir, lambda: _read_path(path, image_size), progress)


def _read_path(path: Path, image_size: int) -> Dataset:
    """Decode a path source, whichever of the accepted layouts it has."""
    if path.is_dir():
        cifar_folder = _find_cifar_folder(path)
        if cifar_folder is not None:
            return _resized(_read_cifar(str(path), _folder_opener(cifar_folder), str(path)), image_size)
        return _read_image_tree(_dir_files(path), str(path), image_size)
    basenames = {PurePosixPath(m).name for m in _archive_members(path)}
    if "data_batch_1" in basenames or {"train", "test", "meta"} <= basenames:
        return _resized(_read_cifar(str(path), _archive_opener(path), str(path)), image_size)
    return _read_image_tree(_archive_files(path), str(path), image_size)


def _resized(ds: Dataset, size: int) -> Dataset:
    if ds.image_size != size:
        f = torch.nn.functional
        ds.train_images = f.interpolate(ds.train_images.float(), size=size, mode="bilinear", antialias=True).round().clamp(0, 255).to(torch.uint8)
        ds.test_images = f.interpolate(ds.test_images.float(), size=size, mode="bilinear", antialias=True).round().clamp(0, 255).to(torch.uint8)
    return ds


# ---------------------------------------------------------------------------------------------
# Python-format CIFAR batches (the canonical archives and torchvision's folders)


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


def _find_cifar_folder(path: Path) -> Path | None:
    for candidate in (path, *(path / a.folder for a in CIFAR_ARCHIVES.values())):
        if (candidate / "data_batch_1").is_file() or ((candidate / "train").is_file() and (candidate / "meta").is_file()):
            return candidate
    return None


def _folder_opener(folder: Path) -> Callable[[str], bytes]:
    def read(name: str) -> bytes:
        path = folder / name
        if not path.is_file():
            raise CnnlabError(f"{folder} has no '{name}': the CIFAR batches are incomplete; delete the folder and download again")
        return path.read_bytes()

    return read


CIFAR_BATCH_NAMES = {"batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6)), "meta", "train", "test"}


def _archive_opener(archive: Path) -> Callable[[str], bytes]:
    """Read the CIFAR batch files of an archive in one pass, without unpacking it to disk."""
    contents = {rel.name: read() for rel, read in _archive_files(archive) if rel.name in CIFAR_BATCH_NAMES}

    def read(name: str) -> bytes:
        if name not in contents:
            raise CnnlabError(f"{archive} has no '{name}': it is not a complete CIFAR archive")
        return contents[name]

    return read


def _read_cifar(source: str, read: Callable[[str], bytes], description: str) -> Dataset:
    def unpickle(name: str) -> dict:
        try:
            return _CifarUnpickler(io.BytesIO(read(name)), encoding="latin1").load()
        except CnnlabError:
            raise
        except Exception as e:  # any unpickling failure means a damaged or foreign file
            raise CnnlabError(f"{description}: '{name}' is not a readable CIFAR batch ({brief(e)}); download the data again") from None

    def images_labels(batches: list[dict], key: str) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            x = np.concatenate([np.asarray(b["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for b in batches])
            y = np.concatenate([np.asarray(b[key], dtype=np.int64) for b in batches])
        except (KeyError, ValueError, TypeError) as e:
            raise CnnlabError(f"{description}: a CIFAR batch has unexpected contents ({brief(e)}); download the data again") from None
        if len(x) != len(y):
            raise CnnlabError(f"{description}: a CIFAR batch has {len(x)} images but {len(y)} labels; download the data again")
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
    digest = hashlib.sha256(tx.numpy().tobytes()[:1 << 20] + vx.numpy().tobytes()[:1 << 20] + ty.numpy().tobytes()).hexdigest()
    _check_labels(description, ty, vy, len(classes))
    return Dataset(source, classes, tx, ty, vx, vy, checksum=f"sha256:{digest}")


def _check_labels(description: str, train_y: torch.Tensor, test_y: torch.Tensor, num_classes: int) -> None:
    for y in (train_y, test_y):
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise CnnlabError(f"{description}: labels fall outside the {num_classes} classes; the data is damaged")


# ---------------------------------------------------------------------------------------------
# Image-folder trees: train/<class>/<file>, test/<class>/<file>, optionally under one top folder

# A file is (relative path inside the tree, a function returning its bytes).
FileEntry = tuple[PurePosixPath, Callable[[], bytes]]


def _dir_files(root: Path) -> Iterator[FileEntry]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            yield PurePosixPath(full.relative_to(root).as_posix()), full.read_bytes


def _archive_members(path: Path) -> list[str]:
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


def _archive_files(path: Path) -> Iterator[FileEntry]:
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


def _read_image_tree(files: Iterator[FileEntry], description: str, size: int) -> Dataset:
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
    return Dataset(description, train_classes, tx, ty, vx, vy, checksum="", train_files=train_files, test_files=test_files)


# ---------------------------------------------------------------------------------------------
# The decode cache


def source_fingerprint(path: Path) -> str:
    """sha256 of an archive's bytes; for a folder, of every file's path, size and mtime."""
    if path.is_file():
        return "sha256:" + file_digest(path)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(path)):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            h.update(f"{os.path.relpath(os.path.join(dirpath, name), path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "tree-sha256:" + h.hexdigest()


def _cache_candidates(path: Path, cache_dir: str | Path | None) -> list[Path]:
    if cache_dir is not None:
        return [Path(cache_dir)]
    if os.environ.get(CACHE_ENV):
        return [Path(os.environ[CACHE_ENV])]
    data_folder = path.parent if path.is_file() else path
    user = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cnnlab"
    # Beside the data when its folder is meant to be written (checked by its mode bits, since
    # root may write anywhere); otherwise the user's cache folder.
    if os.stat(data_folder).st_mode & 0o200:
        return [data_folder / ".cnnlab-cache", user]
    return [user]


def _cached(path: Path, size: int, cache_dir, read: Callable[[], Dataset], progress: bool) -> Dataset:
    fingerprint = source_fingerprint(path)
    key = hashlib.sha256(f"{fingerprint}|{size}|v{CACHE_VERSION}".encode()).hexdigest()[:20]
    filename = f"{path.name}-{key}.npz"
    candidates = _cache_candidates(path, cache_dir)
    for folder in candidates:
        cached = folder / filename
        if cached.is_file():
            try:
                with np.load(cached, allow_pickle=False) as z:
                    files = lambda key: [str(f) for f in z[key]] if key in z.files else None
                    return Dataset(
                        str(path), [str(c) for c in z["classes"]],
                        torch.from_numpy(z["train_x"]), torch.from_numpy(z["train_y"]),
                        torch.from_numpy(z["test_x"]), torch.from_numpy(z["test_y"]), checksum=fingerprint,
                        train_files=files("train_files"), test_files=files("test_files"),
                    )
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                pass  # a damaged cache is rebuilt below
    if progress and sys.stderr.isatty():
        print(f"decoding {path} (once; later loads use the cache)", file=sys.stderr)
    ds = read()
    ds.checksum = fingerprint
    for folder in candidates:  # the first writable location wins; no cache at all is fine too
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{filename}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                np.savez(
                    f, classes=np.array(ds.classes), train_x=ds.train_images.numpy(), train_y=ds.train_labels.numpy(),
                    test_x=ds.test_images.numpy(), test_y=ds.test_labels.numpy(),
                    **({"train_files": np.array(ds.train_files), "test_files": np.array(ds.test_files)} if ds.train_files else {}),
                )
            os.replace(tmp, folder / filename)
            break
        except OSError:
            try:
                tmp.unlink(missing_ok=True)
            except (OSError, UnboundLocalError):
                pass
    return ds


# ---------------------------------------------------------------------------------------------
# Statistics and splits


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std over every pixel of uint8 images [N, 3, H, W], in [0, 1] units."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = (total_sq / n - mean * mean).clamp_min(0).sqrt()
    return tuple(round(float(v) / 255, 4) for v in mean), tuple(round(float(v) / 255, 4) for v in std)


def parse_count(value: str | float | int | None, total: int, what: str) -> int:
    """A count ('5000') or, written with a decimal point, a fraction ('0.1') of `total`; 0 or None means none."""
    if value in (None, "", 0, "0"):
        return 0
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        raise UsageError(f"{what} {value!r} is not a number; give a count (5000) or a fraction (0.1)") from None
    if "." in text or "e" in text.lower():
        count = round(number * total) if 0 < number < 1 else -1
    else:
        count = int(number)
    if not 0 < count < total:
        raise UsageError(f"{what} {value} does not fit the {total} training images; give a count from 1 to {total - 1} "
                         "or a fraction between 0 and 1")
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


def group_take(files: list[str] | None, labels: torch.Tensor, count: int, pattern: str, seed: int,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out whole groups (sessions, patients, scenes): every image of a group lands on one side.

    Groups are taken in a seeded random order until at least `count` images are held out; within a
    class, the same group name in another class is the same group (a session that photographed
    several classes stays together). Returns (taken, rest), both sorted.
    """
    if not files:
        raise UsageError("--val-groups needs an image-folder source (it groups images by their file paths); "
                         "this source has no file paths")
    try:
        re.compile(pattern)
    except re.error as e:
        raise UsageError(f"--val-groups {pattern!r} is not a valid regular expression ({e})") from None
    groups = [group_of(f, pattern) for f in files]
    unmatched = [f for f, g in zip(files, groups) if g is None]
    if unmatched:
        how = "has no subfolder inside its class folder" if pattern == "folder" else f"does not match {pattern!r}"
        raise UsageError(f"--val-groups: {len(unmatched)} training images have no group ({unmatched[0]} {how}); "
                         "every image needs one")
    names = sorted(set(groups))
    if len(names) < 2:
        raise UsageError(f"--val-groups {pattern!r} puts every image in one group ({names[0]}); a split needs at least two")
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    taken: list[int] = []
    for k in order:
        if len(taken) >= count:
            break
        taken.extend(members[names[k]])
    if len(taken) >= len(labels):
        raise UsageError(f"--val-groups: holding out {count} images takes every group; ask for fewer with --val-split")
    taken_t = torch.tensor(sorted(taken), dtype=torch.long)
    mask = torch.ones(len(labels), dtype=torch.bool)
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
