"""Labels files: a CSV of path,label[,split][,group] for images kept in any folder structure."""

from __future__ import annotations

import json
import shutil
import zipfile

import pytest
from conftest import class_images, run_cli
from PIL import Image

from cnnlab.data import load_dataset
from cnnlab.errors import CnnlabError, UsageError
from cnnlab.prepare import split_images
from cnnlab.recipe_files import load_recipe

CLASSES = ["cat", "dog", "fox"]


def write_loose_images(root, per_class: int = 10) -> list[tuple[str, str]]:
    """Images filed by camera and day, not by class: (path, class) of each, as a labels file would list them."""
    x, y = class_images(per_class, num_classes=len(CLASSES), seed=4)
    listed = []
    for k, (image, label) in enumerate(zip(x, y)):
        path = f"camera{k % 2}/day{k % 5}/img_{k:03d}.png"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / path)
        listed.append((path, CLASSES[label]))
    return listed


def write_csv(path, header: str, rows: list[str]):
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_a_labels_file_gives_classes_and_splits_to_images_in_any_folders(tmp_path):
    listed = write_loose_images(tmp_path / "photos")
    split = lambda k: ("test", "val", "train", "train", "train")[k % 5]
    rows = [f"{path},{label},{split(k)}" for k, (path, label) in enumerate(listed)]
    labels = write_csv(tmp_path / "labels.csv", "path,label,split", rows)
    data = load_dataset(str(tmp_path / "photos"), labels=labels, progress=False)
    assert data.classes == CLASSES and len(data.test_labels) == 6 and len(data.train_labels) == 24
    assert len(data.given_val) == 6 and all(data.train_files[k].startswith("val/") for k in data.given_val)
    assert data.layout()["labels"] == f"classes and splits from {labels.resolve()}"
    by_name = dict(listed)
    for k, name in enumerate(data.test_files):  # every image has the class its row gave it
        assert data.classes[data.test_labels[k]] == by_name[name.split("/", 1)[1]]
    unlabelled = load_dataset(
        str(tmp_path / "photos"),
        labels=write_csv(tmp_path / "few.csv", "label,path", [f"{label},{path}" for path, label in listed[:12]]),
        progress=False,
    )  # columns in any order; images the file does not name are not used
    assert len(unlabelled.train_labels) + len(unlabelled.test_labels) == 12 and unlabelled.carved_test


def test_an_archive_with_a_wrapping_folder_takes_paths_with_or_without_it(tmp_path):
    listed = write_loose_images(tmp_path / "photos")
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path, _ in listed:
            zf.write(tmp_path / "photos" / path, f"export/{path}")
    rows = [f"{'export/' if k % 2 else ''}{path},{label}" for k, (path, label) in enumerate(listed)]
    data = load_dataset(str(archive), labels=write_csv(tmp_path / "l.csv", "path,label", rows), progress=False)
    assert data.carved_test and len(data.test_labels) == 6 and data.test_labels.bincount().tolist() == [2, 2, 2]


def test_a_group_column_keeps_groups_whole_in_the_carved_test_split_and_the_validation_split(tmp_path):
    listed = write_loose_images(tmp_path / "photos")
    group = lambda path: path.split("/")[1]  # the day: five groups of six images
    rows = [f"{path},{label},{group(path)}" for path, label in listed]
    data = load_dataset(
        str(tmp_path / "photos"), labels=write_csv(tmp_path / "g.csv", "path,label,group", rows), progress=False
    )
    test_groups = {group(name.split("/", 1)[1]) for name in data.test_files}
    assert len(test_groups) == 1 and len(data.test_labels) == 6 and "groups" in data.layout()
    assert test_groups.isdisjoint(data.train_groups)
    train_index, val_index = split_images(load_recipe("seed", {"val_split": "5"}), data)
    held_out = {data.train_groups[k] for k in val_index}
    assert held_out.isdisjoint(data.train_groups[k] for k in train_index) and len(val_index) == 6


def test_an_edited_labels_file_is_another_dataset_not_a_stale_cache(tmp_path):
    listed = write_loose_images(tmp_path / "photos")
    labels = write_csv(tmp_path / "l.csv", "path,label", [f"{p},{c}" for p, c in listed])
    first = load_dataset(str(tmp_path / "photos"), labels=labels, progress=False)
    write_csv(labels, "path,label", [f"{p},{'dog' if c == 'fox' else c}" for p, c in listed])
    second = load_dataset(str(tmp_path / "photos"), labels=labels, progress=False)
    assert first.classes == CLASSES and second.classes == ["cat", "dog"] and first.checksum != second.checksum


BAD_FILES = [
    ("path,class", ["a.png,cat"], "has no 'label' column (its header is path,class)"),
    ("path,label", [], "has a header but no rows"),
    ("", [], "is empty"),
    ("path,label", ["camera0/day0/nope.png,cat"], "line 2: 'camera0/day0/nope.png' not found in"),
    ("path,label", ["camera0/day0/img_000.png,"], "line 2: empty label"),
    ("path,label,split", ["camera0/day0/img_000.png,cat,holdout"], "line 2: unknown split 'holdout'"),
    ("path,label", ["camera0/day0/img_000.png,cat", "camera0/day0/img_000.png,dog"], "already labelled on line 2"),
    (
        "path,label,split",
        ["camera0/day0/img_000.png,cat,train", "camera1/day1/img_001.png,dog,test", "camera0/day2/img_002.png,fox"],
        "class 'dog' has no training rows",
    ),
    ("path,label", ["camera0/day0/img_000.png,cat", "camera1/day1/img_001.png,cat"], "names one class only"),
    ("path,label,group", ["camera0/day0/img_000.png,cat,a", "camera1/day1/img_001.png,dog,"], "line 3: empty group"),
]


@pytest.mark.parametrize(("header", "rows", "message"), BAD_FILES)
def test_a_malformed_labels_file_is_one_clear_error(tmp_path, header, rows, message):
    write_loose_images(tmp_path / "photos", per_class=2)
    labels = write_csv(tmp_path / "l.csv", header, rows) if header else tmp_path / "l.csv"
    labels.touch()
    with pytest.raises(CnnlabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(str(tmp_path / "photos"), labels=labels, progress=False)


def test_a_labels_file_that_is_not_utf8_or_missing_or_on_a_named_dataset_says_so(tmp_path):
    write_loose_images(tmp_path / "photos", per_class=2)
    (tmp_path / "latin1.csv").write_bytes("path,label\nphoto,chat\xe9\n".encode("latin-1"))
    with pytest.raises(CnnlabError, match="is not UTF-8 text"):
        load_dataset(str(tmp_path / "photos"), labels=tmp_path / "latin1.csv", progress=False)
    with pytest.raises(UsageError, match="no such labels file"):
        load_dataset(str(tmp_path / "photos"), labels=tmp_path / "missing.csv", progress=False)
    with pytest.raises(UsageError, match="labels the images of a folder or archive"):
        load_dataset("cifar10", labels=tmp_path / "latin1.csv", progress=False)


def test_train_then_evaluate_a_labelled_run_from_the_cli(tmp_path):
    listed = write_loose_images(tmp_path / "photos", per_class=6)
    labels = write_csv(tmp_path / "l.csv", "path,label", [f"{p},{c}" for p, c in listed])
    runs = tmp_path / "runs"
    done = run_cli(
        "train", "--data", str(tmp_path / "photos"), "--labels", str(labels), "--epochs", "1",
        "--runs-dir", str(runs), "--name", "r", "--no-plots", "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = json.loads((runs / "r" / "config.json").read_text())
    assert config["data"]["labels"] == str(labels.resolve()) and config["data"]["classes"] == CLASSES
    evaluated = run_cli("evaluate", str(runs / "r"), "--json")  # the run's own data: its images and its labels
    assert evaluated.returncode == 0, evaluated.stderr
    per_class = json.loads(evaluated.stdout)["metrics"]["per_class"]
    assert sorted(per_class) == CLASSES and sum(row["support"] for row in per_class.values()) == 4
    refused = run_cli("train", "--resume", str(runs / "r"), "--labels", str(labels))
    assert refused.returncode == 2 and "drop --labels" in refused.stderr
    shutil.rmtree(tmp_path / "photos" / "camera1")
    broken = run_cli("data", "info", "--data", str(tmp_path / "photos"), "--labels", str(labels))
    assert broken.returncode == 1 and "not found in" in broken.stderr and len(broken.stderr.strip().splitlines()) == 1
