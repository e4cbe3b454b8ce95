"""Reading a run folder back: its JSON files, its metric rows and its checkpoints, defensively.

Every file a run or an audit folder holds may have been truncated by a full disk, edited by hand or
replaced by something hostile. Each reader checks what it reads (a regular file of sane size, valid
JSON of the expected shape, finite numbers, a checkpoint with every field it needs) and turns any
damage into one CnnlabError naming the file and what to do. Checkpoints are loaded with
`weights_only=True`: tensors and plain containers, never code.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import struct
from pathlib import Path

import torch

from .errors import CnnlabError, brief
from .names import shown
from .runs import CHECKPOINT_FORMAT
from .sourcefiles import regular_file

MAX_JSON_BYTES = 256 << 20
DAMAGED = "restore it from a copy, or train the run again"


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def read_json(path: Path, remedy: str = DAMAGED) -> dict:
    """The JSON object in `path` (NaN and infinities refused: cnnlab never writes them)."""
    path = Path(path)
    if not path.exists():
        raise CnnlabError(f"{shown(path.parent)} has no {shown(path.name)}; is it a cnnlab run folder?")
    regular_file(path, shown(path))
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"over {MAX_JSON_BYTES >> 20} MB")
        value = json.loads(path.read_bytes(), parse_constant=_reject_constant)
    except OSError as e:
        raise CnnlabError(f"{shown(path)} cannot be read ({e.strerror}); check its permissions") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CnnlabError(f"{shown(path)} is damaged (not valid JSON: {brief(e, 80)}); {remedy}") from None
    if not isinstance(value, dict):
        raise CnnlabError(f"{shown(path)} is damaged (not a JSON object); {remedy}")
    return value


def recorded_source(folder: Path) -> str:
    """The data source a run (or an audit) folder records in its config.json."""
    config = read_json(Path(folder) / "config.json")
    source = config.get("data", {}).get("source") if isinstance(config.get("data"), dict) else None
    if not isinstance(source, str) or not source:
        raise CnnlabError(
            f"{shown(Path(folder) / 'config.json')} does not name the run's data; pass data", parameters=("data",)
        )
    return source


def recorded_labels(folder: Path) -> str | None:
    """The labels file (labelfile.py) a run's config.json records with its data, if it had one."""
    data = read_json(Path(folder) / "config.json").get("data")
    labels = data.get("labels") if isinstance(data, dict) else None
    return labels if isinstance(labels, str) and labels else None


# Every metrics row has these, as finite numbers; an evaluated split adds its own.
ROW_NUMBERS = ("epoch", "lr", "train_loss", "train_acc")


def read_metrics(run: str | Path) -> list[dict]:
    """The run's metric rows, one per finished epoch, each checked."""
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        raise CnnlabError(f"{shown(run)} has no metrics.jsonl; is it a cnnlab run folder?")
    regular_file(path, shown(path))
    remedy = "its rows are also kept in last.pt: restore the file from a copy, or train the run again"
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"over {MAX_JSON_BYTES >> 20} MB")
        lines = path.read_bytes().decode("utf-8").splitlines()
    except (OSError, ValueError) as e:
        raise CnnlabError(f"{shown(path)} cannot be read ({brief(e, 80)}); {remedy}") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise CnnlabError(f"{shown(path)} is damaged (line {number} is not valid JSON); {remedy}") from None
        if not _good_row(row, rows):
            raise CnnlabError(f"{shown(path)} is damaged (line {number} is not a row of epoch metrics); {remedy}")
        rows.append(row)
    return rows


def finite_number(value) -> bool:
    """A real number as a run file may hold one: not a bool, not NaN, not infinite (JSON reads 1e999 as inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _good_row(row, before: list[dict]) -> bool:
    if not isinstance(row, dict) or not all(finite_number(row.get(k)) for k in ROW_NUMBERS):
        return False
    if not any(finite_number(row.get(f"{split}_acc")) for split in ("test", "val")):
        return False
    expected = before[-1]["epoch"] + 1 if before else row["epoch"]
    return (
        row["epoch"] == expected
        and row["epoch"] >= 1
        and all(finite_number(v) or not isinstance(v, (int, float)) for v in row.values())
    )


def resolve_checkpoint(run_or_checkpoint: str | Path, which: str = "best.pt") -> Path:
    """A run folder means its `which` (falling back to last.pt); a file is taken as it is."""
    path = Path(run_or_checkpoint)
    if path.is_dir():
        for name in (which, "last.pt"):
            if (path / name).exists():
                return path / name
        raise CnnlabError(f"{shown(path)} has no {which} or last.pt; is it a cnnlab run folder?")
    if not path.exists():
        raise CnnlabError(f"{shown(path)}: no such run folder or checkpoint file")
    return path


def load_tensors(path: str | Path):
    """torch.load with weights_only=True: tensors and plain containers, never code."""
    path = Path(path)
    regular_file(path, shown(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:  # not a pickle at all, or a damaged one
            raise CnnlabError(
                f"{shown(path)} is not a readable PyTorch checkpoint (damaged or another format); check the file"
            ) from None
        raise CnnlabError(
            f"{shown(path)} contains pickled Python objects that could run code (it references {found.group(1)}); "
            "cnnlab loads only tensors and plain data. Re-save it with torch.save(model.state_dict(), ...) from code "
            "you trust"
        ) from None
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        IndexError,
        MemoryError,
        OverflowError,
        RecursionError,
        struct.error,  # the unpickler reading a length past the end of a damaged file
    ) as e:
        raise CnnlabError(f"{shown(path)} is not a readable PyTorch checkpoint ({brief(e)}); check the file") from None


def load_checkpoint(path: str | Path) -> dict:
    """A cnnlab checkpoint, loaded safely (see load_tensors) and checked: every field a model is rebuilt
    from is there, of the right type, with finite numbers (weights included)."""
    path = Path(path)
    payload = load_tensors(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CnnlabError(
            f"{shown(path)} is not a cnnlab checkpoint (no '{CHECKPOINT_FORMAT}' header); pass a run "
            "folder or a .pt written by cnnlab"
        )
    problem = checkpoint_problem(payload)
    if problem:
        raise CnnlabError(
            f"{shown(path)} is a damaged cnnlab checkpoint ({problem}); use another checkpoint of the run "
            "(last.pt or best.pt), or train it again"
        )
    return payload


def checkpoint_problem(payload: dict) -> str:
    """What is missing or wrong in a checkpoint's model fields, in words; '' when nothing is."""
    integer = lambda v: isinstance(v, int) and not isinstance(v, bool)
    checks = [
        ("model", lambda v: isinstance(v, str) and v, "a model name"),
        ("num_classes", lambda v: integer(v) and v >= 1, "a class count"),
        (
            "classes",
            lambda v: (
                isinstance(v, list) and len(v) == payload.get("num_classes") and all(isinstance(c, str) for c in v)
            ),
            "one name per class",
        ),
        (
            "mean",
            lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(finite_number(x) for x in v),
            "3 channel means",
        ),
        (
            "std",
            lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(finite_number(x) and x > 0 for x in v),
            "3 positive channel stds",
        ),
        ("image_size", lambda v: integer(v) and 8 <= v <= 512, "an image size from 8 to 512"),
        ("epoch", lambda v: integer(v) and v >= 0, "an epoch count"),
        (
            "state_dict",
            lambda v: isinstance(v, dict) and v and all(isinstance(t, torch.Tensor) for t in v.values()),
            "the weights",
        ),
    ]
    for key, ok, what in checks:
        if key not in payload:
            return f"no '{key}' field"
        if not ok(payload[key]):
            return f"'{key}' is not {what}"
    bad = next(
        (k for k, t in payload["state_dict"].items() if t.is_floating_point() and not torch.isfinite(t).all()), None
    )
    if bad is not None:
        return f"the weights {bad} are not finite numbers (NaN or infinity)"
    return ""


def model_from_checkpoint(payload: dict, path: str | Path = "checkpoint") -> torch.nn.Module:
    from .errors import UsageError
    from .models import build_model, saved_run_options

    recipe = payload.get("recipe")
    try:
        options = saved_run_options(payload["model"], recipe.get("model_options") if isinstance(recipe, dict) else None)
        model = build_model(payload["model"], payload["num_classes"], **options)
    except UsageError as e:  # a model name this cnnlab does not know: the file's problem, not the command's
        raise CnnlabError(f"{shown(path)}: {e}") from None
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise CnnlabError(
            f"{shown(path)}: the weights do not fit model '{payload['model']}' with {payload['num_classes']} classes "
            f"({first[:160]})"
        ) from None
    return model.eval()
