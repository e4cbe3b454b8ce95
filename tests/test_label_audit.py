"""The label audit: confident learning on known probabilities, planted label flips in an image folder
found by k-fold cross-validation through the real CLI, a run's audit of its test split, evaluation
without the flagged images, and bad input."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from conftest import CLASSES, run_cli, write_image_folder

from cnnlab.labelaudit import confident_learning


def test_confident_learning_flags_the_images_confidently_another_class():
    # 3 classes of 10 images each, the model right and sure about all but three labelled class 0:
    # image 1 looks like class 1, image 2 like class 2 (a little less sure it is not 0), image 3 is merely
    # unsure: no class reaches its threshold (the mean probability of the class over its own images).
    probabilities = torch.full((30, 3), 0.05)
    labels = torch.arange(30) // 10
    probabilities[torch.arange(30), labels] = 0.9
    probabilities[1] = torch.tensor([0.05, 0.9, 0.05])
    probabilities[2] = torch.tensor([0.1, 0.0, 0.9])
    probabilities[3] = torch.tensor([0.4, 0.3, 0.3])
    found = confident_learning(probabilities, labels)
    assert found["thresholds"][0] == pytest.approx((7 * 0.9 + 0.05 + 0.1 + 0.4) / 10)
    assert found["issues"].tolist() == [1, 2]  # lowest probability of the given label first
    assert found["suggested"][1] == 1 and found["suggested"][2] == 2 and found["suggested"][3] == 0
    assert found["joint"].sum() == 29 and found["joint"][0, 1] == 1 and found["joint"][0, 2] == 1  # 3 is not sure


def test_non_finite_probabilities_are_refused():
    from cnnlab.errors import CnnlabError

    probabilities = torch.full((4, 2), 0.5)
    probabilities[0, 0] = float("nan")
    with pytest.raises(CnnlabError, match="not all finite"):
        confident_learning(probabilities, torch.tensor([0, 0, 1, 1]))


@pytest.fixture(scope="module")
def flipped_folder(tmp_path_factory):
    """4 learnable classes of 16 training images; three of them moved into another class's folder."""
    root = write_image_folder(tmp_path_factory.mktemp("flips"), n_train_per_class=16, n_test_per_class=4)
    classes = CLASSES[:4]
    moves = [
        (classes[0], "0001.png", classes[1]),
        (classes[2], "0033.png", classes[3]),
        (classes[3], "0050.png", classes[0]),
    ]
    flipped = []
    for source, name, target in moves:
        shutil.move(root / "train" / source / name, root / "train" / target / f"flipped-{name}")
        flipped.append(f"train/{target}/flipped-{name}")
    return root, flipped


def test_k_fold_audit_of_planted_flips_writes_a_ranked_list_from_ordinary_fold_runs(flipped_folder, tiny_run, tmp_path):
    root, _ = flipped_folder
    out = tmp_path / "labels"
    args = ["label-audit", "--data", str(root), "--folds", "4", "--epochs", "6", "--batch-size", "16"]
    result = run_cli(*args, "--precision", "fp32", "--no-progress", "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((out / "label_issues.csv").open()))
    # How well four tiny trainings go differs between CPUs, so only what holds for any outcome is asserted
    # here; the ranking itself is asserted on known probabilities above.
    assert all(r["given_label"] != r["suggested_label"] for r in rows)
    assert [float(r["given_label_probability"]) for r in rows] == sorted(
        float(r["given_label_probability"]) for r in rows
    )
    assert {r["image"] for r in rows} <= {f"train/{p.parent.name}/{p.name}" for p in (root / "train").rglob("*.png")}
    summary = json.loads((out / "label_audit.json").read_text())
    assert summary["split"] == "train" and summary["images"] == 64 and summary["flagged"] == len(rows)
    assert sorted(p.name for p in (out / "folds").iterdir()) == ["fold1", "fold2", "fold3", "fold4"]
    assert (out / "gallery.png").stat().st_size > 1000
    assert "likely wrong labels" in result.stdout
    elsewhere = run_cli("evaluate", str(tiny_run), "--exclude-label-issues", str(out))
    assert elsewhere.returncode == 1 and "audits other data" in elsewhere.stderr


def test_a_runs_test_split_audit_and_evaluation_without_the_flagged_images(tiny_run, archive, tmp_path):
    out = tmp_path / "audit"
    result = run_cli("label-audit", "--run", str(tiny_run), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (
        summary["split"] == "test"
        and summary["images"] == 100
        and summary["flagged"] == len(list(csv.DictReader((out / "label_issues.csv").open())))
    )
    # The mean of a run's predictions with themselves is the run's own: the same audit, every time.
    twice = ("--run", str(tiny_run), "--run", str(tiny_run))
    again = run_cli("label-audit", *twice, "--out", str(tmp_path / "again"), "--json")
    assert json.loads(again.stdout)["confident_joint"] == summary["confident_joint"]
    evaluated = run_cli("evaluate", str(tiny_run), "--exclude-label-issues", str(out), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    free = report["label_issue_free"]
    assert free["excluded"] == summary["flagged"] and free["test_images"] == 100 - summary["flagged"]
    if 0 < free["excluded"] < 100:
        kept = free["test_acc"] * free["test_images"] + free["acc_on_excluded"] * free["excluded"]
        assert report["test_acc"] * 100 == pytest.approx(kept)


def test_bad_label_audits_get_one_line(tiny_run, flipped_folder, tmp_path):
    root, _ = flipped_folder
    other_classes = run_cli("label-audit", "--run", str(tiny_run), "--data", str(root), "--out", str(tmp_path / "a"))
    assert other_classes.returncode == 1 and "trained on classes" in other_classes.stderr
    assert len(other_classes.stderr.strip().splitlines()) == 1
    with_recipe = run_cli("label-audit", "--run", str(tiny_run), "--recipe", "speedrun", "--out", str(tmp_path / "b"))
    assert with_recipe.returncode == 2 and "drop --recipe" in with_recipe.stderr
    missing = run_cli("evaluate", str(tiny_run), "--exclude-label-issues", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "not a cnnlab label audit" in missing.stderr
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "label_audit.json").write_text('{"split": "test", "issues": [1e999]}')
    broken = run_cli("evaluate", str(tiny_run), "--exclude-label-issues", str(damaged))
    assert broken.returncode == 1 and len(broken.stderr.strip().splitlines()) == 1 and "Traceback" not in broken.stderr
