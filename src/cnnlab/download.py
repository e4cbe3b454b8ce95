"""Fetch, verify and unpack archives without ever leaving a half-written file behind.

The rule everywhere: write to a temporary name beside the target, check it, then `os.replace`
it into place. A failed download, a wrong checksum or a hostile archive member raises
`CnnlabError` and removes whatever was partially written.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import CnnlabError, brief
from .names import shown

MIRROR_ENV = "CNNLAB_CIFAR_MIRROR"
OFFICIAL_MIRROR = "https://www.cs.toronto.edu/~kriz"


@dataclass(frozen=True)
class CifarArchive:
    """One of the canonical python-format CIFAR archives."""

    filename: str
    md5: str
    folder: str  # what the archive extracts to (torchvision uses the same layout)


CIFAR_ARCHIVES = {
    "cifar10": CifarArchive("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py"),
    "cifar100": CifarArchive("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python"),
}


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, md5: str | None, progress: bool = True) -> Path:
    """Download `url` to `dest`, verifying length and md5 before it appears under its name."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    digest = hashlib.md5()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            expected = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=expected,
                unit="B",
                unit_scale=True,
                desc=dest.name,
                disable=None if progress else True,
                leave=False,
            ) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if expected is not None and received != expected:
            raise CnnlabError(f"download of {url} stopped after {received} of {expected} bytes; run the command again")
        if md5 is not None and digest.hexdigest() != md5:
            raise CnnlabError(
                f"{url} has md5 {digest.hexdigest()}, expected {md5}: the file is damaged or not the expected archive; "
                f"try again or use another mirror (--mirror or ${MIRROR_ENV})"
            )
        os.replace(tmp, dest)
        return dest
    except http.client.IncompleteRead as e:
        raise CnnlabError(
            f"download of {url} stopped after {received + len(e.partial)} bytes; run the command again"
        ) from None
    except urllib.error.HTTPError as e:
        raise CnnlabError(f"could not download {url}: HTTP {e.code} {e.reason}; check the mirror address") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        if isinstance(e, CnnlabError):
            raise
        reason = getattr(e, "reason", None) or e
        raise CnnlabError(
            f"could not download {url} ({reason}); without network access, copy {dest.name} into {dest.parent} "
            f"or point --mirror / ${MIRROR_ENV} at a reachable copy"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def check_member_name(archive: Path, name: str) -> PurePosixPath:
    """Refuse archive member names that could escape the folder they are unpacked into."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise CnnlabError(
            f"{shown(archive)} contains the member '{shown(name)}', which points outside the archive's folder; "
            "refusing to use it"
        )
    return path


def extract(archive: Path, target: Path) -> None:
    """Unpack a .tar[.gz] or .zip into `target`, all or nothing.

    Every member name is checked first; only regular files and folders are written (no links,
    devices or permission bits from the archive). Unpacking happens in a temporary folder beside
    `target`, whose top-level entries are then moved into place.
    """
    target.mkdir(parents=True, exist_ok=True)
    staging = target / f".extract-{os.getpid()}"
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    check_member_name(archive, info.filename)
                zf.extractall(staging)
        else:
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                for m in members:
                    check_member_name(archive, m.name)
                    if not (m.isfile() or m.isdir()):
                        raise CnnlabError(
                            f"{archive} contains '{m.name}', which is a link or special file; refusing to unpack it"
                        )
                tf.extractall(staging, members=members, filter="data")
        for entry in staging.iterdir():
            final = target / entry.name
            if final.exists():
                shutil.rmtree(final) if final.is_dir() else final.unlink()
            os.replace(entry, final)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise CnnlabError(
            f"{archive} is not a readable archive ({brief(e)}); delete it and download or copy it again"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_cifar(
    name: str, root: Path, mirror: str | None = None, md5: str | None = None, progress: bool = True
) -> Path:
    """Return the folder of the python-format CIFAR batches under `root`, fetching it if needed.

    Order: an existing extracted folder (a torchvision download counts), then an archive already
    in `root` (verified), then a download from the mirror (flag, then $CNNLAB_CIFAR_MIRROR, then the
    official site). `md5` overrides the canonical checksum (for private mirrors and tests).
    """
    spec = CIFAR_ARCHIVES[name]
    folder = root / spec.folder
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    expected_md5 = md5 or spec.md5
    archive = root / spec.filename
    if archive.is_file():
        if file_digest(archive, "md5") != expected_md5:
            raise CnnlabError(f"{archive} does not have the expected md5 {expected_md5}; delete it and download again")
    else:
        base = (mirror or os.environ.get(MIRROR_ENV) or OFFICIAL_MIRROR).rstrip("/")
        download(f"{base}/{spec.filename}", archive, expected_md5, progress=progress)
    extract(archive, root)
    if not folder.is_dir():
        raise CnnlabError(f"{archive} did not contain the folder {spec.folder}/; it is not a {name} archive")
    return folder
