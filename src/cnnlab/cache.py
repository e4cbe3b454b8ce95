"""The decode cache: a decoded image-folder source kept as one `.npz`, so the second load is a file read,
not 60,000 JPEG decodes."""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from .download import file_digest

if TYPE_CHECKING:
    from .data import Dataset

CACHE_VERSION = 2  # 2: image folders keep their file paths
CACHE_ENV = "CNNLAB_CACHE"


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


def cached(path: Path, size: int, cache_dir, read: Callable[[], Dataset], progress: bool) -> Dataset:
    from .data import Dataset

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
