"""The files of a data source, a folder or a .tar/.tar.gz/.zip archive, listed and read safely.

- Hidden files and folders (a leading '.', such as the decode cache beside the data) and macOS archive
  litter (`__MACOSX`) are not data: never listed, never read.
- Only regular files are read. A FIFO, socket or device in a folder, or a link or device member in an
  archive, is refused by name before anything is opened (opening a FIFO waits forever).
- An archive member may inflate to at most MAX_MEMBER_BYTES and the whole archive to MAX_ARCHIVE_BYTES,
  counted as the bytes come out (a zip's declared sizes can lie), and read a megabyte at a time: a zip
  bomb is refused naming its member, with memory bounded by one member.
- Folder files are handed over as paths: they are decoded from disk, never read whole into memory.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .download import check_member_name
from .errors import CnnlabError, brief
from .names import shown

MAX_MEMBER_BYTES = 256 << 20  # one image, inflated: far above any photo a CIFAR-class model is given
MAX_ARCHIVE_BYTES = 16 << 30  # every member together, inflated
MAX_MEMBERS = 1_000_000
CHUNK = 1 << 20

# What an archive error can look like coming out of tarfile, zipfile and zlib (an encrypted zip member
# raises RuntimeError, an unsupported compression method NotImplementedError).
ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    RuntimeError,
    NotImplementedError,
)


@dataclass(frozen=True)
class SourceFile:
    name: str  # the path inside the source, '/'-separated, spelled as the OS or the archive spells it
    size: int  # bytes (declared, for archive members)
    mtime_ns: int = 0

    @property
    def rel(self) -> PurePosixPath:
        return PurePosixPath(self.name)


def is_litter(name: str) -> bool:
    """Hidden files and folders, and the `__MACOSX` folder zip adds on a Mac."""
    return any(
        part.startswith(".") and part not in (".", "..") or part == "__MACOSX" for part in name.split("/") if part
    )


def is_archive(path: Path) -> bool:
    return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)


def list_files(path: Path, exclude: tuple[Path, ...] = ()) -> list[SourceFile]:
    """Every data file of a folder (not walking into `exclude`) or an archive, sorted by name."""
    files = _list_folder(path, exclude) if path.is_dir() else _list_archive(path)
    return sorted(files, key=lambda f: f.name)


def read_files(path: Path, names: set[str]) -> Iterator[tuple[str, bytes | Path]]:
    """(name, contents) for each of `names`: a folder's files as paths, an archive's members as bytes,
    in one sequential pass (gzip cannot seek cheaply)."""
    if path.is_dir():
        for name in sorted(names):
            yield name, path / name
        return
    budget = [MAX_ARCHIVE_BYTES]
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if info.filename in names:
                        with zf.open(info) as member:
                            yield info.filename, _read_capped(member, path, info.filename, budget)
        else:
            with tarfile.open(path, mode="r|*") as tf:
                for member in tf:
                    if member.isfile() and member.name in names:
                        yield member.name, _read_capped(tf.extractfile(member), path, member.name, budget)
    except ARCHIVE_ERRORS as e:
        if isinstance(e, CnnlabError):
            raise
        raise CnnlabError(f"{shown(path)} is not a readable archive ({brief(e)}); copy or download it again") from None


def _read_capped(stream, archive: Path, name: str, budget: list[int]) -> bytes:
    chunks, total = [], 0
    while chunk := stream.read(CHUNK):
        total += len(chunk)
        budget[0] -= len(chunk)
        if total > MAX_MEMBER_BYTES:
            raise _too_large(
                archive, name, f"inflates to more than {MAX_MEMBER_BYTES >> 20} MiB, the limit for one member"
            )
        if budget[0] < 0:
            raise _too_large(archive, name, f"takes the archive past {MAX_ARCHIVE_BYTES >> 30} GiB inflated, the limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(archive: Path, name: str, what: str) -> CnnlabError:
    return CnnlabError(
        f"{shown(archive)}: member '{shown(name)}' {what}; if the archive is genuine, unpack it and "
        "pass the folder instead"
    )


# ---------------------------------------------------------------------------------------------


FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


def special_kind(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((words for test, words in FILE_KINDS if test(mode)), "not a regular file")


def regular_file(path: Path, name: str) -> Path:
    """`path` if it is a regular file (following links); anything else is refused before it is opened,
    since opening a FIFO waits forever and a device may never end."""
    try:
        kind = special_kind(os.stat(path).st_mode)
    except FileNotFoundError:
        raise CnnlabError(f"{name}: no such file") from None
    except OSError as e:
        raise CnnlabError(f"{name}: cannot be read ({e.strerror})") from None
    if kind:
        raise CnnlabError(f"{name} is {kind}, not an image file")
    return path


def _list_folder(root: Path, exclude: tuple[Path, ...]) -> Iterator[SourceFile]:
    """os.walk, following links to folders (a class folder may be a link) but walking each folder once."""
    skip = {os.path.realpath(p) for p in exclude}
    walked = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = os.stat(dirpath)
        if (here.st_dev, here.st_ino) in walked:
            dirnames[:] = []
            continue  # a link back into the tree: its files are listed where it points
        walked.add((here.st_dev, here.st_ino))
        dirnames[:] = sorted(
            d for d in dirnames if not is_litter(d) and os.path.realpath(os.path.join(dirpath, d)) not in skip
        )
        for name in sorted(filenames):
            if is_litter(name):
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            try:
                info = os.stat(full)  # follows a link to what it points at
            except OSError as e:
                raise CnnlabError(
                    f"{shown(root)}: '{shown(rel)}' cannot be read ({e.strerror}; a broken link?); remove it or fix it"
                ) from None
            kind = special_kind(info.st_mode)
            if kind:
                raise CnnlabError(
                    f"{shown(root)}: '{shown(rel)}' is {kind}, not an image file; remove it from the folder"
                )
            yield SourceFile(rel, info.st_size, info.st_mtime_ns)


def _list_archive(path: Path) -> list[SourceFile]:
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                entries = [
                    (i.filename, i.is_dir(), stat.S_ISLNK(i.external_attr >> 16), i.file_size) for i in zf.infolist()
                ]
        elif tarfile.is_tarfile(path):
            entries = []
            with tarfile.open(path, mode="r|*") as tf:
                for member in tf:
                    entries.append((member.name, member.isdir(), not (member.isfile() or member.isdir()), member.size))
                    if len(entries) > MAX_MEMBERS:
                        raise CnnlabError(
                            f"{shown(path)} has more than {MAX_MEMBERS:,} members, the limit; unpack it and "
                            "pass the folder instead"
                        )
        else:
            raise CnnlabError(
                f"{shown(path)} is neither a folder nor a .tar, .tar.gz or .zip archive; give an image folder "
                "or an archive of one"
            )
    except ARCHIVE_ERRORS as e:
        if isinstance(e, CnnlabError):
            raise
        raise CnnlabError(f"{shown(path)} is not a readable archive ({brief(e)}); copy or download it again") from None
    files, total = [], 0
    for name, is_dir, special, size in entries:
        check_member_name(path, name)
        if is_dir or is_litter(name):
            continue
        if special:
            raise CnnlabError(
                f"{shown(path)}: member '{shown(name)}' is a link or a special file, not an image; "
                "cnnlab reads only regular files from archives"
            )
        if size > MAX_MEMBER_BYTES:
            raise _too_large(
                path, name, f"declares {size:,} bytes, over the {MAX_MEMBER_BYTES >> 20} MiB limit for one member"
            )
        total += size
        if total > MAX_ARCHIVE_BYTES:
            raise _too_large(path, name, f"takes the archive past {MAX_ARCHIVE_BYTES >> 30} GiB inflated, the limit")
        files.append(SourceFile(name, size))
    return files
