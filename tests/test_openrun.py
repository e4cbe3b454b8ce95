"""One way to open a run: the weights every command uses and says, and the Python inference API."""

from __future__ import annotations

import json

import numpy as np
import torch
from conftest import run_cli
from PIL import Image

import cnnlab


def test_every_command_uses_and_names_the_same_weights(tiny_run, tmp_path):
    # The tiny run holds out a validation split, so best.pt (chosen on it) is what it reports.
    summary = json.loads((tiny_run / "summary.json").read_text())
    best_epoch = summary["best_epoch"]
    named = f"best.pt (epoch {best_epoch}, chosen on val_acc)"
    assert summary["reported"]["weights"] == named
    rows = [json.loads(l) for l in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert summary["reported"]["test_acc"] == rows[best_epoch - 1]["test_acc"]
    evaluated = json.loads(run_cli("evaluate", str(tiny_run), "--json").stdout)
    assert evaluated["weights"]["described"] == named and evaluated["test_acc"] == summary["reported"]["test_acc"]
    confusion = json.loads(run_cli("confusion", str(tiny_run), "--json").stdout)
    assert confusion["weights"]["described"] == named and confusion["accuracy"] == evaluated["test_acc"]
    assert json.loads((tiny_run / "confusion.json").read_text())["weights"] == named  # the figures of training's end
    text = run_cli("evaluate", str(tiny_run))
    assert named in text.stdout.splitlines()[0]
    diagnosed = json.loads(run_cli("diagnose", str(tiny_run), "--json").stdout)
    assert diagnosed["weights"]["described"] == named
    last = json.loads(run_cli("evaluate", str(tiny_run), "--json", "--weights", "last").stdout)
    assert last["weights"]["described"] == f"last.pt (epoch {len(rows)})" and last["test_acc"] == rows[-1]["test_acc"]
    picture = tmp_path / "p.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(picture)
    predicted = json.loads(run_cli("predict", str(tiny_run), str(picture), "--json").stdout)
    assert predicted["weights"] == named


def test_load_run_predicts_as_the_cli_does_from_paths_pictures_and_arrays(tiny_run, tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (45, 61, 3), dtype=np.uint8)  # not the model's size: resized the same way
    path = tmp_path / "odd.png"
    Image.fromarray(pixels).save(path)
    run = cnnlab.load_run(tiny_run)
    assert run.weights.file.name == "best.pt" and "best.pt" in repr(run)
    by_path, by_picture, by_array = run.predict([path, Image.open(path), pixels])
    cli = json.loads(run_cli("predict", str(tiny_run), str(path), "--json", "--top-k", "3").stdout)
    expected = [(t["class"], t["probability"]) for t in cli["top"]]
    for answer in (by_path, by_picture, by_array):
        assert [c for c, _ in answer.top] == [c for c, _ in expected]
        assert np.allclose([p for _, p in answer.top], [p for _, p in expected], atol=1e-6)
    batch = torch.from_numpy(np.stack([pixels[:32, :32]] * 2)).permute(0, 3, 1, 2).contiguous()
    assert [p.top for p in run.predict(batch)] == [p.top for p in run.predict([pixels[:32, :32]] * 2)]
    missing = run.predict([tmp_path / "nope.png"])[0]
    assert missing.error and "no such file" in missing.error


def test_load_run_evaluates_as_the_cli_does(tiny_run):
    run = cnnlab.load_run(tiny_run)
    report = run.evaluate()
    cli = json.loads(run_cli("evaluate", str(tiny_run), "--json").stdout)
    assert report["test_acc"] == cli["test_acc"] and report["per_class_acc"] == cli["per_class_acc"]
    data = run.dataset()
    assert "\n" not in repr(data) and repr(data).startswith("Dataset(") and "10 classes" in repr(data)
