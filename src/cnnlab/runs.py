"""Run folders: claimed, locked and written (runfiles.py reads them back).

A run folder holds config.json, metrics.jsonl, metrics.csv, last.pt, best.pt and summary.json.
Every file is written to a temporary name, flushed to disk and renamed, so a crash or a full disk
leaves the previous version intact. A folder is claimed with an atomic mkdir, so two processes
can never write into the same run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path

import torch

from .errors import CnnlabError, UsageError
from .names import shown

CHECKPOINT_FORMAT = "cnnlab-checkpoint"
METRIC_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_balanced_acc",
    "val_macro_f1",
    "val_ece",
    "val_ece_calibrated",
    "temperature",
    "test_loss",
    "test_acc",
    "seconds",
    "eval_seconds",
    "images_per_s",
    "ema_val_acc",
    "ema_test_acc",
    "tta_test_acc",
    "tta_test_loss",
]


# A test hook for the crash tests: "last.pt:3" makes this process SIGKILL itself during its third write
# of last.pt, after the temporary file is written and before it replaces the old one.
KILL_DURING_WRITE = "CNNLAB_TEST_KILL_DURING_WRITE"
_writes: dict[str, int] = {}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _maybe_die_mid_write(path.name)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CnnlabError(
            f"could not write {path} ({e.strerror or e}); free some disk space or choose another --runs-dir"
        ) from None


def _maybe_die_mid_write(name: str) -> None:
    hook = os.environ.get(KILL_DURING_WRITE)
    if hook:
        target, _, count = hook.partition(":")
        _writes[name] = _writes.get(name, 0) + 1
        if name == target and _writes[name] == int(count or 1):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def free_name(path: Path) -> Path:
    """`path`, or when a file of that name exists, the first free one of path-2, path-3, ... (same suffix)."""
    candidate, k = path, 1
    while candidate.exists():
        k += 1
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
    return candidate


def check_run_name(name: str) -> str:
    """A run folder's name: one path component, not hidden, without control characters."""
    if (
        not name
        or name in (".", "..")
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or os.sep in name
        or not name.isprintable()
    ):
        raise UsageError(
            f"name {shown(name)!r} is not a usable folder name: use one name without '/', a leading "
            "'.' or control characters (letters, digits, '-' and '_' are safe)",
            parameters=("name",),
        )
    return name


def claim_run_folder(runs_dir: str | Path, name: str | None, stem: str) -> Path:
    """Create and return runs_dir/name; with no name, a fresh `stem-YYYYmmdd-HHMMSS[-k]`.

    `os.mkdir` either creates the folder or fails, so two processes can't both claim it.
    """
    runs_dir = Path(runs_dir)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CnnlabError(
            f"cannot create the runs folder {runs_dir} ({e.strerror}); choose another --runs-dir"
        ) from None
    if name is not None:
        check_run_name(name)
        try:
            (runs_dir / name).mkdir()
        except FileExistsError:
            raise CnnlabError(
                f"run {runs_dir / name} already exists; choose another --name (runs are never overwritten)"
            ) from None
        return runs_dir / name
    base = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    for k in range(1, 10_000):
        candidate = runs_dir / (base if k == 1 else f"{base}-{k}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise CnnlabError(f"could not find a free run name in {runs_dir}")


class RunLock:
    """An exclusive lock on a run folder for as long as one process trains in it (released at exit,
    even after SIGKILL, because the kernel drops a dead process's locks)."""

    def __init__(self, path: Path):
        import fcntl

        self.file = open(Path(path) / ".lock", "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise CnnlabError(f"{path} is being trained by {holder}; wait for it to finish or stop it first") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"process {os.getpid()}")
        self.file.flush()

    def release(self) -> None:
        self.file.close()


class RunFolder:
    """Writes one run's files. The training loop hands it rows and checkpoints; it never reads them."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows: list[dict] = []

    def remove_stale_temporaries(self) -> list[str]:
        """Temporary files of a process that died mid-write (call only while holding the RunLock)."""
        stale = sorted(self.path.glob(".*.tmp"))
        for tmp in stale:
            tmp.unlink(missing_ok=True)
        return [p.name for p in stale]

    def write_config(self, config: dict) -> None:
        atomic_write_json(self.path / "config.json", config)

    def write_metrics(self, rows: list[dict]) -> None:
        """Rewrite metrics.jsonl and metrics.csv whole: they are small, and never half-written."""
        self.rows = list(rows)
        atomic_write_bytes(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(self.path / "metrics.csv", buffer.getvalue().encode())

    def save_checkpoint(self, name: str, payload: dict) -> None:
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(self.path / name, buffer.getvalue())

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.path / "summary.json", summary)
