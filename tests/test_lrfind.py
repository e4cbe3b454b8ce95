"""The learning-rate finder: the rules on curves with known answers, the sweep on real training, the CLI."""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_cli

from cnnlab.data import load_dataset
from cnnlab.lrfind import find_learning_rate, longest_descent, suggestions
from cnnlab.recipe_files import load_recipe, recipe_toml


def test_the_rules_read_a_curve_with_known_answers():
    # Flat, then falling by 0.02 a step from step 20 to step 59 (fastest around 39), then rising steeply.
    curve = [2.0] * 20 + [2.0 - 0.02 * k for k in range(1, 41)] + [1.2 + 0.3 * k for k in range(1, 11)]
    curve[40] -= 0.01  # a deeper step into 40: the central difference at 39 is the steepest
    rates = [10 ** (-5 + k / 10) for k in range(len(curve))]
    first, last = longest_descent(curve)
    assert (first, last) == (19, 59)  # the last flat point starts the fall; the bottom ends it
    found = suggestions(rates, curve)
    assert found["valley"] == rates[39] and found["minimum/10"] == pytest.approx(rates[59] / 10)
    assert found["steepest"] == rates[39]


def test_the_sweep_trains_a_fresh_model_with_a_growing_rate(archive):
    data = load_dataset(str(archive), progress=False)
    found = find_learning_rate(load_recipe("seed", {"batch_size": 32}), data, start=1e-4, end=1.0, steps=30)
    assert 5 <= len(found.rates) <= 30 and found.rates == sorted(found.rates) and found.rates[0] == pytest.approx(1e-4)
    assert all(math.isfinite(v) for v in found.smoothed) and len(found.losses) == len(found.rates)
    assert all(1e-4 <= rate <= 1.0 for rate in found.suggestions.values())  # every reading lies in the sweep
    assert found.stopped_early == (len(found.rates) < 30)


def test_lr_find_from_the_cli_writes_a_plot_and_a_recipe_and_no_run(archive, tmp_path):
    args = ("lr-find", "--data", str(archive), "--steps", "12", "--batch-size", "32", "--epochs", "3")
    (tmp_path / "lr-find.png").write_bytes(b"someone's own figure")
    done = run_cli(*args, "--write-recipe", "tuned.toml", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["rule"] == "valley" and result["recipe_lr"] == 0.1 and result["plot"] == "lr-find-2.png"
    assert (tmp_path / "lr-find.png").read_bytes() == b"someone's own figure"  # never overwritten
    tuned = load_recipe(str(tmp_path / "tuned.toml"))
    assert tuned.lr == float(f"{result['suggestion']:.3g}") and tuned.batch_size == 32 and tuned.epochs == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr-find-2.png", "lr-find.png", "tuned.toml"]  # no run
    refused = run_cli(*args, "--write-recipe", "tuned.toml", cwd=tmp_path)
    assert refused.returncode == 1 and "exists" in refused.stderr and not (tmp_path / "lr-find-3.png").exists()
    backwards = run_cli(*args, "--start", "1", "--end", "0.1", cwd=tmp_path)
    assert backwards.returncode == 2 and "0 < start < end" in backwards.stderr


@pytest.mark.parametrize("name", ["seed", "speedrun-cpu", "resnet18"])
def test_a_written_recipe_reads_back_as_the_same_recipe(tmp_path, name):
    recipe = load_recipe(name, {"description": 'quotes " and \\ and ü', "lr": 1.5e-05})
    (tmp_path / "r.toml").write_text(recipe_toml(recipe), encoding="utf-8")
    assert load_recipe(str(tmp_path / "r.toml")) == recipe
