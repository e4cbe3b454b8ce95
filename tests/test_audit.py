"""Leak audit and group-aware splits, on image folders built on disk with known, planted duplicates;
the CLI in real subprocesses."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from cnnlab.audit import audit, nearest, pixel_features, unit_rows
from cnnlab.data import load_dataset
from cnnlab.splits import group_take, path_groups, stratified_take

CLASSES = ["ant", "bee", "cow"]


def distinct_image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A random smooth colour pattern: unrelated to any other image drawn this way."""
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    image = np.asarray(coarse.resize((size, size), Image.BILINEAR)).astype(np.float64)
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


def near_copy(image: np.ndarray) -> np.ndarray:
    """The same picture taken again: shifted one pixel, 8% brighter, re-encoded as a JPEG."""
    shifted = np.roll(image, 1, axis=1)
    shifted[:, 0] = image[:, 0]
    brighter = np.clip(shifted.astype(np.float64) * 1.08, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(brighter).save(buffer, "JPEG", quality=85)
    return np.asarray(Image.open(buffer).convert("RGB"))


@pytest.fixture(scope="module")
def leaky_folder(tmp_path_factory):
    """20 train and 6 test images per class, distinct, then: test/ant/t000 is an exact copy of a training
    image, test/bee/t000 a near copy of one, and train/cow holds a near copy of another training image."""
    root = tmp_path_factory.mktemp("leaky")
    rng = np.random.default_rng(0)
    train = {c: [distinct_image(rng) for _ in range(20)] for c in CLASSES}
    test = {c: [distinct_image(rng) for _ in range(6)] for c in CLASSES}
    test["ant"][0] = train["ant"][3].copy()
    test["bee"][0] = near_copy(train["bee"][5])
    train["cow"][19] = near_copy(train["cow"][7])
    for split, images in (("train", train), ("test", test)):
        for c, items in images.items():
            (root / split / c).mkdir(parents=True)
            for i, image in enumerate(items):
                Image.fromarray(image).save(root / split / c / f"{split[:2]}{i:03d}.png")
    return root


def test_audit_finds_exactly_the_planted_duplicates(leaky_folder):
    data = load_dataset(str(leaky_folder), progress=False)
    result = audit(data)
    names = {(data.image_name(p.split_a, p.index_a), data.image_name(p.split_b, p.index_b)): p for p in result.pairs}
    assert set(names) == {
        ("test/ant/te000.png", "train/ant/tr003.png"),
        ("test/bee/te000.png", "train/bee/tr005.png"),
        ("train/cow/tr007.png", "train/cow/tr019.png"),
    }
    assert names[("test/ant/te000.png", "train/ant/tr003.png")].exact
    assert not names[("test/bee/te000.png", "train/bee/tr005.png")].exact
    assert result.counts["test_with_exact_train_duplicate"] == 1
    assert result.counts["test_with_near_train_duplicate"] == 2
    assert result.counts["within_train"] == {"exact_pairs": 0, "near_pairs": 1}
    # The planted near copy is well above the threshold, and the closest unrelated pair well below it.
    unrelated = [p.similarity for p in result.closest_cross if not p.exact][1]
    assert names[("test/bee/te000.png", "train/bee/tr005.png")].similarity >= result.threshold and unrelated < 0.9


def test_audit_cli_writes_ranked_pairs_galleries_and_evaluate_excludes_the_leaks(leaky_folder, tmp_path):
    out = tmp_path / "audit"
    result = run_cli("audit", "--data", str(leaky_folder), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "near duplicate in train:   2 of 18" in result.stdout
    rows = list(csv.DictReader((out / "pairs.csv").open()))
    assert [r["image_a"] for r in rows][0] == "test/ant/te000.png" and rows[0]["exact"] == "1"
    assert [float(r["similarity"]) for r in rows] == sorted((float(r["similarity"]) for r in rows), reverse=True)
    assert len(list(csv.DictReader((out / "nearest_train.csv").open()))) == 18
    for png in ("gallery.png", "gallery_threshold.png"):
        with Image.open(out / png) as im:
            im.load()
            assert im.width > 400
    again = run_cli("audit", "--data", str(leaky_folder), "--out", str(out))  # an existing folder is refused
    assert again.returncode != 0 and "exists" in again.stderr

    runs = tmp_path / "runs"
    trained = run_cli(
        "train",
        "--data",
        str(leaky_folder),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--runs-dir",
        str(runs),
        "--name",
        "r",
        "--no-progress",
        "--no-plots",
        "--precision",
        "fp32",
    )
    assert trained.returncode == 0, trained.stderr
    evaluated = run_cli("evaluate", str(runs / "r"), "--exclude-duplicates", str(out), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    free = report["duplicate_free"]
    assert free["excluded"] == 2 and free["test_images"] == 16
    total = report["test_acc"] * 18
    assert total == pytest.approx(free["test_acc"] * 16 + free["acc_on_excluded"] * 2)


def test_evaluate_refuses_an_audit_of_other_data(leaky_folder, tiny_run, tmp_path):
    out = tmp_path / "audit"
    assert run_cli("audit", "--data", str(leaky_folder), "--out", str(out)).returncode == 0
    result = run_cli("evaluate", str(tiny_run), "--exclude-duplicates", str(out))
    assert result.returncode == 1 and "audits other data" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    missing = run_cli("evaluate", str(tiny_run), "--exclude-duplicates", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "not a cnnlab audit" in missing.stderr


def test_model_features_audit_uses_the_runs_penultimate_layer(leaky_folder, tmp_path):
    runs = tmp_path / "runs"
    assert (
        run_cli(
            "train",
            "--data",
            str(leaky_folder),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--runs-dir",
            str(runs),
            "--name",
            "r",
            "--no-progress",
            "--no-plots",
        ).returncode
        == 0
    )
    result = run_cli(
        "audit", "--data", str(leaky_folder), "--model-run", str(runs / "r"), "--out", str(tmp_path / "a"), "--json"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["space"] == "model" and summary["threshold"] == 0.99
    assert summary["counts"]["test_with_exact_train_duplicate"] == 1  # identical pixels, whatever the features


# ---------------------------------------------------------------------------------------------
# Group-aware validation splits


@pytest.fixture(scope="module")
def session_folder(tmp_path_factory):
    """Each class photographed in 6 sessions of 5 shots; shots of one session are near copies of each other
    (the chapter's leaky example: one collection session, many nearly identical frames)."""
    root = tmp_path_factory.mktemp("sessions")
    rng = np.random.default_rng(1)
    for split, sessions in (("train", 6), ("test", 2)):
        for c in CLASSES:
            for s in range(sessions):
                scene = distinct_image(rng)
                folder = root / split / c / f"session{s}"
                folder.mkdir(parents=True)
                for shot in range(5):
                    image = scene if shot == 0 else near_copy(scene)
                    Image.fromarray(np.roll(image, shot % 2, axis=0)).save(folder / f"shot{shot}.png")
    return root


def leaks(data, val_index, train_index) -> int:
    """Validation images whose nearest training image is a near copy (pixel-feature audit threshold)."""
    raw = pixel_features(data.train_images)
    features = unit_rows(raw, raw.mean(dim=0))
    similarity, _ = nearest(features[val_index], features[train_index])
    return int((similarity >= 0.95).sum())


def test_random_split_leaks_sessions_and_group_split_does_not(session_folder):
    data = load_dataset(str(session_folder), progress=False)
    count = len(data.train_labels) // 4
    random_val, random_train = stratified_take(data.train_labels, count, seed=0)
    assert leaks(data, random_val, random_train) > count // 2
    for pattern in ("folder", r"session\d+", r"/(session\d)/"):
        group_val, group_train = group_take(path_groups(data.train_files, pattern), count, seed=0)
        assert len(group_val) >= count and leaks(data, group_val, group_train) == 0
        sessions = lambda index: {data.train_files[i].rsplit("/", 1)[0] for i in index.tolist()}
        assert not sessions(group_val) & sessions(group_train)


def test_group_split_from_the_cli_records_the_split_and_refuses_bad_patterns(session_folder, tmp_path, archive):
    runs = tmp_path / "runs"
    ok = run_cli(
        "train",
        "--data",
        str(session_folder),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--val-split",
        "0.2",
        "--val-groups",
        "folder",
        "--runs-dir",
        str(runs),
        "--name",
        "g",
        "--no-progress",
        "--no-plots",
    )
    assert ok.returncode == 0, ok.stderr
    config = json.loads((runs / "g" / "config.json").read_text())
    assert config["recipe"]["val_groups"] == "folder" and "val_acc" in json.loads(
        (runs / "g" / "metrics.jsonl").read_text().splitlines()[0]
    )
    cases = [
        (
            ["--data", str(session_folder), "--val-split", "0.2", "--val-groups", "(unclosed"],
            2,
            "not a valid regular expression",
        ),
        (["--data", str(session_folder), "--val-split", "0.2", "--val-groups", "nomatch"], 2, "have no group"),
        (["--data", str(session_folder), "--val-groups", "folder"], 2, "add --val-split"),
        (["--data", str(archive), "--val-split", "0.2", "--val-groups", "folder"], 2, "needs an image-folder source"),
    ]
    for args, code, message in cases:
        result = run_cli("train", *args, "--epochs", "1", "--runs-dir", str(tmp_path / "bad"), "--no-progress")
        assert result.returncode == code and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
