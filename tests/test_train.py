"""The loop: the chapter's schedule, reproducibility, validation splits, and learning on real data."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import class_images

from cnnlab.data import Dataset
from cnnlab.recipe_files import load_recipe
from cnnlab.schedule import learning_rate
from cnnlab.train import train

TIMING = {"seconds", "images_per_s", "eval_seconds"}


def synthetic_dataset(n_train=40, n_test=10, num_classes=4) -> Dataset:
    tx, ty = class_images(n_train, num_classes=num_classes, seed=1)
    vx, vy = class_images(n_test, num_classes=num_classes, seed=2)
    t = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    return Dataset(
        "synthetic",
        [f"c{i}" for i in range(num_classes)],
        t(tx),
        torch.from_numpy(ty),
        t(vx),
        torch.from_numpy(vy),
        checksum="synthetic",
    )


def test_cosine_matches_pytorch_scheduler_stepped_per_epoch():
    recipe = load_recipe("seed")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=recipe.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs)
    for epoch in range(recipe.epochs):
        assert math.isclose(learning_rate(recipe, epoch), opt.param_groups[0]["lr"], rel_tol=1e-9, abs_tol=1e-12)
        opt.step()
        sched.step()


def test_same_seed_gives_identical_metrics():
    recipe = load_recipe("seed", {"epochs": 2, "batch_size": 32, "seed": 7})
    rows = [train(recipe, synthetic_dataset(), runs_dir=None, progress=False).rows for _ in range(2)]
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING} for r in rs]
    assert strip(rows[0]) == strip(rows[1])
    other = train(
        load_recipe("seed", {"epochs": 2, "batch_size": 32, "seed": 8}),
        synthetic_dataset(),
        runs_dir=None,
        progress=False,
    ).rows
    assert strip(other) != strip(rows[0])


def test_validation_split_is_reported_and_chooses_best(tmp_path):
    recipe = load_recipe("seed", {"epochs": 2, "batch_size": 32, "val_split": "0.25"})
    result = train(recipe, synthetic_dataset(), runs_dir=tmp_path, name="v", progress=False)
    assert all("val_acc" in r and "val_loss" in r for r in result.rows)
    assert result.summary["best_metric"] == "val_acc"
    import json

    config = json.loads((tmp_path / "v" / "config.json").read_text())
    assert config["data"]["val_held_out"] == 40 and config["data"]["train_used"] == 120


def test_synthetic_classes_are_learned():
    recipe = load_recipe("seed", {"epochs": 4, "batch_size": 32, "lr": 0.05})
    result = train(recipe, synthetic_dataset(n_train=60), runs_dir=None, progress=False)
    assert result.rows[-1]["test_acc"] > 80


def test_a_few_epochs_on_real_images_learn_far_above_chance(real_dataset):
    # Judged on the first 2,000 test images: three float32 passes over all 10,000 cost more than the training.
    data = dataclasses.replace(
        real_dataset, test_images=real_dataset.test_images[:2000], test_labels=real_dataset.test_labels[:2000]
    )
    recipe = load_recipe("seed", {"epochs": 3, "train_subset": "4000", "seed": 0})
    result = train(recipe, data, runs_dir=None, progress=False)
    print("real-data rows:", [(r["epoch"], round(r["test_acc"], 2)) for r in result.rows])
    # Chance is 10%; how far above it three short epochs get varies by CPU (34-45% seen), so the bar is low.
    assert result.rows[-1]["test_acc"] > 20
    assert result.rows[-1]["train_loss"] < result.rows[0]["train_loss"]


def test_learning_curve_points_follow_the_training_precision_and_the_final_row_is_float32():
    from cnnlab.evaluate import evaluate
    from cnnlab.loader import Loader, Normalizer
    from cnnlab.splits import channel_stats

    data = synthetic_dataset(n_train=20)  # small: on a CPU without native bf16 every bf16 step is emulated
    options = {"epochs": 2, "batch_size": 32, "precision": "bf16", "seed": 3}
    fast = train(load_recipe("seed", {**options, "eval_precision": "auto"}), data, runs_dir=None, progress=False)
    full = train(load_recipe("seed", {**options, "eval_precision": "fp32"}), data, runs_dir=None, progress=False)
    # Training is the same; epoch 1's test loss was computed in bf16 in one run and float32 in the other.
    assert fast.rows[0]["train_loss"] == full.rows[0]["train_loss"]
    assert fast.rows[0]["test_loss"] != full.rows[0]["test_loss"]
    assert math.isclose(fast.rows[0]["test_loss"], full.rows[0]["test_loss"], rel_tol=0.02)
    # The final row is a result: float32 in both, and what evaluating the returned model gives.
    assert fast.rows[-1]["test_loss"] == full.rows[-1]["test_loss"]
    loader = Loader(
        data.test_images,
        data.test_labels,
        1000,
        Normalizer(*channel_stats(data.train_images)),
        device=torch.device("cpu"),
        channels_last=True,
    )
    assert evaluate(fast.model, loader)["loss"] == pytest.approx(fast.rows[-1]["test_loss"], rel=1e-6)
    # With a validation split the rows choose best.pt: every one of them is float32.
    held_out = {**options, "val_split": "0.25"}
    rows = [
        train(load_recipe("seed", {**held_out, "eval_precision": mode}), data, runs_dir=None, progress=False).rows
        for mode in ("auto", "fp32")
    ]
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING} for r in rs]
    assert strip(rows[0]) == strip(rows[1])


def test_the_final_metrics_are_those_of_a_fresh_float32_evaluation_of_the_final_weights(tmp_path):
    """The last epoch's float32 test pass is reused for summary's test_metrics rather than run twice:
    the numbers must be those a separate evaluation of the run's final weights gives."""
    from cnnlab.evaluate import evaluate
    from cnnlab.loader import Loader
    from cnnlab.metrics import classification_metrics
    from cnnlab.openrun import load_run

    data = synthetic_dataset()
    recipe = load_recipe("seed", {"epochs": 2, "batch_size": 16, "eval_precision": "auto"})
    result = train(recipe, data, runs_dir=tmp_path, name="r", progress=False, plots=False)
    run = load_run(tmp_path / "r")
    fresh = evaluate(
        run.model,
        Loader(data.test_images, data.test_labels, recipe.eval_batch_size, run.normalizer, device=torch.device("cpu")),
    )
    expected = classification_metrics(fresh["logits"], fresh["labels"], data.classes)
    got = result.summary["test_metrics"]
    assert got["accuracy"] == expected["accuracy"] == result.rows[-1]["test_acc"]
    assert got["ece"] == pytest.approx(expected["ece"], abs=1e-6)
