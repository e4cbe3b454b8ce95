"""Figures, confusion, diagnosis, early stopping, ablations and TensorBoard on a real (tiny) run folder."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CLASSES, files_under, run_cli
from PIL import Image

from cnnlab.ablate import ABLATIONS, variant_recipes
from cnnlab.data import load_dataset
from cnnlab.evaluate import confusion_matrix, most_confused
from cnnlab.recipe_files import load_recipe
from cnnlab.runfiles import load_checkpoint
from cnnlab.train import train

FIGURES = ("curves.png", "confusion.png", "errors.png", "per_class.png")


def test_a_run_ends_with_its_figures_and_confusion_numbers(tiny_run):
    for name in FIGURES:
        with Image.open(tiny_run / name) as image:
            assert image.format == "PNG" and image.width >= 400 and image.height >= 150
    confusion = json.loads((tiny_run / "confusion.json").read_text())
    matrix = torch.tensor(confusion["matrix"])
    assert matrix.shape == (10, 10) and int(matrix.sum()) == 100 and confusion["classes"] == CLASSES
    last = [json.loads(l) for l in (tiny_run / "metrics.jsonl").read_text().splitlines()][-1]
    # The figures describe the final model: its accuracy is the run's final test accuracy.
    assert confusion["accuracy"] == pytest.approx(last["test_acc"])
    assert 100.0 * int(matrix.trace()) / 100 == pytest.approx(last["test_acc"])


def test_confusion_matrix_counts_rows_true_columns_predicted():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0, 2, 1, 0, 2])
    matrix = confusion_matrix(predicted, labels, 3)
    assert matrix.tolist() == [[1, 2, 0], [1, 1, 0], [1, 1, 2]]
    pairs = most_confused(matrix, k=5)
    assert [(p["a"], p["b"], p["total"], p["a_as_b"], p["b_as_a"]) for p in pairs] == [
        (0, 1, 3, 2, 1),
        (0, 2, 1, 0, 1),
        (1, 2, 1, 0, 1),
    ]


def test_confusion_command_prints_the_matrix_pairs_and_a_gallery(tiny_run):
    result = run_cli("confusion", str(tiny_run), "--top", "2", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    matrix = torch.tensor(report["matrix"])
    both_ways = matrix + matrix.T
    confused_pairs = int((both_ways.triu(diagonal=1) > 0).sum())
    assert len(report["most_confused"]) == min(2, confused_pairs) >= 1 and report["classes"] == CLASSES
    for pair in report["most_confused"]:
        a, b = pair["classes"]
        i, j = CLASSES.index(a), CLASSES.index(b)
        assert pair["total"] == int(matrix[i, j] + matrix[j, i]) == pair[f"{a} as {b}"] + pair[f"{b} as {a}"]
    with Image.open(report["gallery"]) as image:
        assert image.format == "PNG"
    text = run_cli("confusion", str(tiny_run))
    assert text.returncode == 0 and "<- predicted" in text.stdout and "airplane" in text.stdout
    assert "most confused pairs" in text.stdout


def test_plot_redraws_missing_figures(tiny_run, tmp_path):
    import shutil

    copy = shutil.copytree(tiny_run, tmp_path / "copy")
    for name in FIGURES:
        (copy / name).unlink()
    result = run_cli("plot", str(copy))
    assert result.returncode == 0, result.stderr
    assert all((copy / name).is_file() for name in FIGURES)


def test_diagnose_command(tiny_run, tmp_path):
    result = run_cli("diagnose", str(tiny_run))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("verdict: ") and "remedies" in result.stdout
    report = json.loads(run_cli("diagnose", str(tiny_run), "--json").stdout)
    assert (
        report["verdict"] in ("still improving", "underfitting", "good fit", "overfitting")
        and report["numbers"]["split"] == "val"
    )
    for bad, needle in ((tmp_path / "nope", "no such run folder"), (tmp_path, "no metrics.jsonl")):
        failed = run_cli("diagnose", str(bad))
        assert failed.returncode == 1 and needle in failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1 and "Traceback" not in failed.stderr


def test_confusion_rejects_a_bad_top(tiny_run):
    result = run_cli("confusion", str(tiny_run), "--top", "0")
    assert result.returncode == 2 and "--top" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_early_stopping_keeps_the_best_epoch(archive, tmp_path):
    data = load_dataset(str(archive), progress=False)
    # A constant high rate on easy data: validation accuracy saturates, then cannot improve.
    recipe = load_recipe(
        "seed",
        {
            "epochs": 40,
            "batch_size": 32,
            "val_split": "50",
            "early_stop": 2,
            "schedule": "constant",
            "precision": "fp32",
        },
    )
    result = train(recipe, data, runs_dir=tmp_path, name="stop", progress=False, plots=False)
    summary = json.loads((tmp_path / "stop" / "summary.json").read_text())
    # Where it stops depends on how the training went; the rule does not: the first epoch that is 2 past
    # the best validation accuracy so far ends the run (or, if none is, all 40 epochs run).
    best, best_epoch, expected_stop = -1.0, 0, None
    for row in result.rows:
        if row["val_acc"] > best:
            best, best_epoch = row["val_acc"], row["epoch"]
        if row["epoch"] - best_epoch >= 2:
            expected_stop = row["epoch"]
            break
    assert summary["epochs_planned"] == 40 and summary["stopped_early"] == (expected_stop is not None)
    assert summary["epochs"] == (expected_stop or 40) and summary["best_epoch"] == best_epoch
    assert load_checkpoint(tmp_path / "stop" / "best.pt")["epoch"] == summary["best_epoch"]
    assert len(result.rows) == summary["epochs"]
    best = max(r["val_acc"] for r in result.rows)
    assert result.rows[summary["best_epoch"] - 1]["val_acc"] == best


def test_the_early_stopping_rule_with_min_delta_and_grace():
    from cnnlab.stopping import stops_early

    rows = lambda *values: [{"epoch": k + 1, "m": v} for k, v in enumerate(values)]
    assert not stops_early(rows(50, 60, 60), "m", patience=2)
    assert stops_early(rows(50, 60, 60, 59), "m", patience=2)  # 2 epochs past the best (epoch 2)
    assert not stops_early(rows(50, 60, 60, 59), "m", patience=2, grace=4)  # still within the grace epochs
    # A gain of 0.5 is no improvement with min_delta 1: the best stays epoch 2, so epoch 4 stops.
    assert stops_early(rows(50, 60, 60.5, 60.5), "m", patience=2, min_delta=1.0)
    assert not stops_early(rows(50, 60, 60.5, 60.5), "m", patience=2)
    assert not stops_early(rows(50, 60, 60, 59), "m", patience=0)


def test_best_pt_can_be_chosen_on_macro_f1(archive, tmp_path):
    data = load_dataset(str(archive), progress=False)
    recipe = load_recipe(
        "seed",
        {"epochs": 3, "batch_size": 32, "val_split": "50", "precision": "fp32", "early_stop_metric": "val_macro_f1"},
    )
    result = train(recipe, data, runs_dir=tmp_path, name="f1", progress=False, plots=False)
    assert result.summary["best_metric"] == "val_macro_f1"
    best_epoch = max(result.rows, key=lambda r: (r["val_macro_f1"], -r["epoch"]))["epoch"]
    assert result.summary["best_epoch"] == best_epoch
    assert result.summary["reported"]["weights"] == f"best.pt (epoch {best_epoch}, chosen on val_macro_f1)"
    assert all(0 <= r["val_balanced_acc"] <= 100 for r in result.rows)


def test_early_stopping_needs_a_validation_split(archive, tmp_path):
    result = run_cli("train", "--data", str(archive), "--early-stop", "3", "--runs-dir", str(tmp_path))
    assert result.returncode == 2 and "--val-split" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and files_under(tmp_path) == set()


def test_ablation_variants_are_the_base_recipe_with_one_change_each():
    base = load_recipe("seed", {"seed": 7})
    recipes = variant_recipes(ABLATIONS["recipe"], base)
    assert list(recipes) == ["seed", "no-augmentation", "no-weight-decay", "constant-lr", "poor (all three)"]
    assert all(r.seed == 7 and r.epochs == 15 for r in recipes.values())
    assert recipes["seed"].to_dict() == {**base.to_dict(), "epochs": 15}
    poor = recipes["poor (all three)"]
    assert (poor.crop_padding, poor.flip, poor.weight_decay, poor.schedule) == (0, False, 0.0, "constant")
    assert recipes["no-weight-decay"].crop_padding == 4 and recipes["no-weight-decay"].weight_decay == 0.0
    bn = variant_recipes(ABLATIONS["bn"], base, epochs=3)
    assert [r.model for r in bn.values()] == ["smallcnn", "smallcnn-nobn"] and bn["with-bn"].epochs == 3


def test_ablate_command_writes_runs_a_table_and_a_plot(archive, tmp_path):
    result = run_cli(
        "ablate",
        "bn",
        "--data",
        str(archive),
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--runs-dir",
        str(tmp_path),
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert "| with-bn |" in result.stdout and "| without-bn |" in result.stdout
    (folder,) = tmp_path.iterdir()
    comparison = json.loads((folder / "ablation.json").read_text())
    assert [r["variant"] for r in comparison["table"]] == ["with-bn", "without-bn"]
    for row in comparison["table"]:
        rows = [json.loads(l) for l in (folder / row["run"].split("/")[-1] / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and row["final_test_acc"] == rows[-1]["test_acc"]
    assert (folder / "ablation.md").read_text().startswith("Exercise 19.5.2")
    with Image.open(folder / "ablation.png") as image:
        assert image.format == "PNG"


def test_tensorboard_scalars_read_back(archive, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = load_dataset(str(archive), progress=False)
    recipe = load_recipe("seed", {"epochs": 2, "batch_size": 32, "precision": "fp32"})
    result = train(recipe, data, runs_dir=tmp_path, name="tb", progress=False, plots=False, tensorboard=True)
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "accuracy/train", "accuracy/test", "loss/test", "train/lr"} <= tags
    assert [e.step for e in events.Scalars("accuracy/test")] == [1, 2]
    assert [e.value for e in events.Scalars("accuracy/test")] == pytest.approx([r["test_acc"] for r in result.rows])
