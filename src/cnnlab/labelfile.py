"""A labels file: a CSV that names each image's class, for images kept in any folder structure, in a
folder or a .tar, .tar.gz or .zip archive (`cnnlab train --data photos.zip --labels labels.csv`).

Columns, found by their header (any order; other columns are ignored):
- `path`: the image's path inside the source, '/'-separated; inside an archive with one wrapping folder,
  with or without that folder;
- `label`: its class;
- `split` (optional): train, val (or valid) or test; an empty cell means train. Without test rows a
  seeded 20% of the training images becomes the test split, as for a folder with train/ alone;
- `group` (optional): images of one group (a patient, a session, a scene) are kept on one side of every
  split cnnlab makes, the validation split and a carved test split.

Images of the source that the file does not name are not used: a labels file may label a subset.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import CnnlabError
from .images import IMAGE_EXTENSIONS
from .names import portable, shown
from .sourcefiles import SourceFile, special_kind

REQUIRED = ("path", "label")
SPLIT_NAMES = {"": "train", "train": "train", "val": "val", "valid": "val", "test": "test"}
MAX_LABELS_BYTES = 256 << 20  # a CSV of some million rows; a larger file is not a labels file


@dataclass(frozen=True)
class LabelRow:
    line: int  # in the file, for error messages
    path: str
    label: str
    split: str  # train, val or test
    group: str | None


def check_labels_file(file: str | Path) -> Path:
    """`file` if it is a regular file of a plausible size: checked before anything reads it (the decode
    cache hashes it first), since a FIFO would block forever and a device never ends."""
    file = Path(file).expanduser()
    info = os.stat(file)
    kind = special_kind(info.st_mode)
    if kind:
        raise CnnlabError(f"{shown(file)} is {kind}, not a labels file; give a CSV file of path,label rows")
    if info.st_size > MAX_LABELS_BYTES:
        raise CnnlabError(
            f"{shown(file)} is over {MAX_LABELS_BYTES >> 20} MiB; a labels file is a CSV of path,label rows"
        )
    return file


def read_labels(file: str | Path) -> list[LabelRow]:
    """The rows of a labels file, checked: a header with path and label, no empty cell where one is
    needed, known split names, each path once."""
    file = check_labels_file(file)
    name = shown(file)
    try:
        text = file.read_bytes().decode("utf-8-sig")  # Excel writes a byte-order mark
    except UnicodeDecodeError:
        raise CnnlabError(f"{name} is not UTF-8 text; save the labels file as UTF-8 CSV") from None
    try:
        table = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise CnnlabError(f"{name} is not a readable CSV ({e}); give path,label rows under a header") from None
    if not table or not any(cell.strip() for cell in table[0]):
        raise CnnlabError(f"{name} is empty; a labels file starts with a header row such as path,label")
    header = [cell.strip().lower() for cell in table[0]]
    missing = [column for column in REQUIRED if column not in header]
    if missing:
        raise CnnlabError(
            f"{name} has no {' or '.join(repr(c) for c in missing)} column (its header is {','.join(table[0])}); "
            "the first row must name the columns path and label, optionally split and group"
        )
    where = {column: header.index(column) for column in (*REQUIRED, "split", "group") if column in header}
    rows, seen = [], {}
    for line, cells in enumerate(table[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue  # blank lines
        cell = lambda column: cells[where[column]].strip() if column in where and where[column] < len(cells) else ""
        path, label, split = cell("path").strip("/"), cell("label"), cell("split").lower()
        if not path or not label:
            raise CnnlabError(f"{name} line {line}: empty {'path' if not path else 'label'}; every row needs both")
        if split not in SPLIT_NAMES:
            raise CnnlabError(
                f"{name} line {line}: unknown split {cell('split')!r}; use train, val (or valid), test, "
                "or leave it empty"
            )
        if path in seen:
            raise CnnlabError(
                f"{name} line {line}: '{shown(path)}' was already labelled on line {seen[path]}; keep one"
            )
        seen[path] = line
        rows.append(
            LabelRow(line, path, label, SPLIT_NAMES[split], cell("group") or None if "group" in where else None)
        )
    if not rows:
        raise CnnlabError(f"{name} has a header but no rows; add one path,label row per image")
    if "group" in where and any(row.group is None for row in rows):
        first = next(row for row in rows if row.group is None)
        raise CnnlabError(f"{name} line {first.line}: empty group; with a group column every row needs one")
    return rows


def match_files(rows: list[LabelRow], files: list[SourceFile], description: str, labels_name: str) -> list[str]:
    """The source's name of each row's image, in the order of `rows`. A path may leave out the single folder
    that wraps an archive's contents; every path must name an image the source holds."""
    names = {f.name.strip("/"): f.name for f in files}
    tops = {f.name.split("/", 1)[0] for f in files}
    wrapper = next(iter(tops)) + "/" if len(tops) == 1 and all("/" in f.name for f in files) else None
    found, unknown = [], []
    for row in rows:
        name = names.get(row.path) or (names.get(wrapper + row.path) if wrapper else None)
        if name is None:
            unknown.append(row)
        found.append(name)
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise CnnlabError(
            f"{labels_name} line {unknown[0].line}: '{shown(unknown[0].path)}'{more} not found in {description}; "
            "give paths relative to the top of the data (in an archive, with or without its one wrapping folder)"
        )
    first_row = {}
    for row, name in zip(rows, found):
        if name in first_row:
            raise CnnlabError(
                f"{labels_name} line {row.line}: '{shown(row.path)}' is the image of line {first_row[name]} again; "
                "keep one row per image"
            )
        first_row[name] = row.line
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            raise CnnlabError(
                f"{labels_name} line {row.line}: '{shown(row.path)}' is not an image ({', '.join(IMAGE_EXTENSIONS)})"
            )
    return found


def check_classes(rows: list[LabelRow], labels_name: str) -> None:
    """Every class must have training images (a class seen only in val or test cannot be learnt), and
    there must be two classes at least."""
    train = {row.label for row in rows if row.split == "train"}
    empty = sorted({row.label for row in rows} - train)
    if empty:
        raise CnnlabError(
            f"{labels_name}: class {portable(empty[0])!r} has no training rows (only val or test); "
            "label some of its images as train, or drop its rows"
        )
    if len(train) < 2:
        raise CnnlabError(
            f"{labels_name} names one class only ({portable(next(iter(train)))!r}); a classifier needs two"
        )
