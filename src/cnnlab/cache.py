"""The decode cache: a decoded path source kept as one `.npz`, so the next load is a file read, not 60,000
JPEG decodes.

- One file per source: its name holds the source's path and image size (which source) and its
  fingerprint (which version of it). Writing a new version removes the older ones.
- The fingerprint is the archive's sha256, or for a folder the name, size and modification time of
  every file the reader reads; hidden files are not data, so the cache beside the data never counts.
- Every load verifies the file cheaply: the version and fingerprint it was made for, the arrays' shapes
  and label range, and a sha256 of the arrays (0.1 s for CIFAR-10). A damaged file is said in one
  warning line and rebuilt; it is never used and never fatal.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .download import file_digest
from .errors import CnnlabWarning
from .names import portable, shown
from .sourcefiles import list_files

if TYPE_CHECKING:
    from .data import Dataset

CACHE_VERSION = 4  # 3: one verified file per source (digest, shapes, labels); 4: area-correct shrinking
CACHE_ENV = "CNNLAB_CACHE"
ARRAYS = ("train_x", "train_y", "test_x", "test_y")


def source_fingerprint(path: Path, exclude: tuple[Path, ...] = ()) -> str:
    """sha256 of an archive's bytes; for a folder, of every data file's name, size and mtime."""
    if path.is_file():
        return "sha256:" + file_digest(path)
    h = hashlib.sha256()
    for f in list_files(path, exclude):
        h.update(os.fsencode(f.name) + f"\0{f.size}\0{f.mtime_ns}\n".encode())
    return "tree-sha256:" + h.hexdigest()


def cache_folders(path: Path, cache_dir: str | Path | None) -> list[Path]:
    """Where the cache of `path` may live, first choice first."""
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


def cached(
    path: Path,
    size: int,
    cache_dir,
    read: Callable[[tuple[Path, ...]], Dataset],
    progress: bool,
    labels: Path | None = None,
) -> Dataset:
    """The dataset of `path` at `size` (labelled by the `labels` file, if given), from its cache when a
    verified one exists, else `read(exclude)` (exclude: cache folders inside the source, which the reader
    must not walk into) and then cached."""
    folders = cache_folders(path, cache_dir)
    exclude = tuple(f for f in folders if _inside(f, path))
    fingerprint = source_fingerprint(path, exclude)
    if labels is not None:  # another labels file, or an edited one, is another dataset
        fingerprint += "+labels-sha256:" + file_digest(labels)
    which = _source_key(path, size, labels)
    filename = f"{which}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:16]}.npz"
    for folder in folders:
        if (folder / filename).is_file():
            ds, problem = _load(folder / filename, path, size, fingerprint)
            if ds is not None:
                return ds
            warnings.warn(
                f"the decode cache {shown(folder / filename)} is damaged ({problem}); decoding {shown(path)} again",
                CnnlabWarning,
                stacklevel=2,
            )
            _remove(folder / filename)
    if progress and sys.stderr.isatty():
        print(f"decoding {shown(path)} (once; later loads use the cache)", file=sys.stderr)
    ds = read(exclude)
    ds.checksum = fingerprint
    for folder in folders:  # the first writable location wins; no cache at all is fine too
        if _store(folder, filename, ds, size, fingerprint):
            for stale in folder.glob(f"{glob_escape(which)}-*.npz"):
                if stale.name != filename:
                    _remove(stale)
            break
    return ds


def _inside(folder: Path, source: Path) -> bool:
    try:
        Path(os.path.realpath(folder)).relative_to(os.path.realpath(source))
        return True
    except ValueError:
        return False


def _source_key(path: Path, size: int, labels: Path | None = None) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", portable(path.name))[:60] or "data"
    identity = os.fsencode(path) + f"|{size}|v{CACHE_VERSION}".encode()
    if labels is not None:
        identity += b"|labels:" + os.fsencode(labels)
    return f"{stem}-{hashlib.sha256(identity).hexdigest()[:12]}"


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _digest(arrays: dict, files_json: bytes) -> str:
    h = hashlib.sha256()
    for key in ARRAYS:
        h.update(memoryview(np.ascontiguousarray(arrays[key])).cast("B"))
    h.update(files_json)
    return h.hexdigest()


def _store(folder: Path, filename: str, ds: Dataset, size: int, fingerprint: str) -> bool:
    arrays = {
        "train_x": ds.train_images.numpy(),
        "train_y": ds.train_labels.numpy(),
        "test_x": ds.test_images.numpy(),
        "test_y": ds.test_labels.numpy(),
    }
    files_json = json.dumps({"train": ds.train_files, "test": ds.test_files, "groups": ds.train_groups}).encode()
    meta = {
        "version": CACHE_VERSION,
        "fingerprint": fingerprint,
        "image_size": size,
        "classes": ds.classes,
        "digest": _digest(arrays, files_json),
    }
    tmp = folder / f".{filename}.{os.getpid()}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(
                f,
                **arrays,
                files=np.frombuffer(files_json, dtype=np.uint8),
                meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            )
        os.replace(tmp, folder / filename)
        return True
    except OSError:
        _remove(tmp)
        return False


def _load(file: Path, path: Path, size: int, fingerprint: str) -> tuple[Dataset | None, str]:
    """(dataset, "") from a verified cache file, or (None, what is wrong with it)."""
    from .data import Dataset

    try:
        with open(file, "rb") as f, np.load(f, allow_pickle=False) as z:  # our own handle: np.load leaks it on bad zips
            meta = json.loads(z["meta"].tobytes())
            arrays = {key: z[key] for key in ARRAYS}
            files_json = z["files"].tobytes()
    except Exception as e:  # numpy's header parser alone raises SyntaxError or TokenError on a damaged header
        return None, f"unreadable: {type(e).__name__}"
    problem = _check(meta, arrays, files_json, size, fingerprint)
    if problem:
        return None, problem
    files = json.loads(files_json)
    return Dataset(
        str(path),
        list(meta["classes"]),
        *(torch.from_numpy(arrays[k]) for k in ARRAYS),
        checksum=fingerprint,
        train_files=files["train"],
        test_files=files["test"],
        train_groups=files.get("groups"),
    ), ""


def _check(meta, arrays: dict, files_json: bytes, size: int, fingerprint: str) -> str:
    if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION or meta.get("fingerprint") != fingerprint:
        return "made for another version of the source or of cnnlab"
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "no class names"
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if (
            x.dtype != np.uint8
            or x.ndim != 4
            or x.shape[1:] != (3, size, size)
            or y.dtype != np.int64
            or y.shape != (len(x),)
        ):
            return f"{split} arrays of the wrong shape or type"
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            return f"{split} labels outside the {len(classes)} classes"
    if _digest(arrays, files_json) != meta.get("digest"):
        return "its contents do not match their checksum"
    try:
        files = json.loads(files_json)
        ok = all(files[s] is None or len(files[s]) == len(arrays[f"{s}_y"]) for s in ("train", "test"))
        groups = files.get("groups")
        ok = ok and (groups is None or len(groups) == len(arrays["train_y"]))
    except (ValueError, KeyError, TypeError):
        ok = False
    return "" if ok else "file names that do not fit the images"


def _remove(file: Path) -> None:
    try:
        file.unlink(missing_ok=True)
    except OSError:
        pass
