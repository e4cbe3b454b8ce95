"""Metrics a deployment needs (checked by hand and against scikit-learn), calibration (ECE on logits with a
known answer, temperature scaling), its use by predict, evaluate and export, --min-confidence, and
area-correct shrinking on enlarged copies of images."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from cnnlab.images import picture_array
from cnnlab.metrics import classification_metrics, expected_calibration_error, fit_temperature, top_k_accuracy
from cnnlab.openrun import load_run


def one_hot_logits(predictions: list[int], n_classes: int, confidence: float = 0.9) -> torch.Tensor:
    """Logits whose softmax gives `confidence` to the predicted class and shares the rest evenly."""
    rest = (1 - confidence) / (n_classes - 1)
    logits = torch.full((len(predictions), n_classes), math.log(rest))
    logits[torch.arange(len(predictions)), torch.tensor(predictions)] = math.log(confidence)
    return logits


def test_a_hand_worked_case():
    # labels    a a a a b b c c ; predicted a a a b b c c a
    # a: tp 3, predicted 4, support 4 -> P 3/4, R 3/4; b: tp 1, predicted 2, support 2 -> P 1/2, R 1/2
    # c: tp 1, predicted 2, support 2 -> P 1/2, R 1/2
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    m = classification_metrics(one_hot_logits([0, 0, 0, 1, 1, 2, 2, 0], 3), labels, ["a", "b", "c"])
    assert m["per_class"]["a"] == {"precision": 75.0, "recall": 75.0, "f1": 75.0, "support": 4}
    assert m["per_class"]["b"]["precision"] == pytest.approx(50.0) and m["per_class"]["c"]["f1"] == pytest.approx(50)
    assert m["macro"]["f1"] == pytest.approx(100 * (0.75 + 0.5 + 0.5) / 3)
    assert m["weighted"]["recall"] == pytest.approx(100 * (4 * 0.75 + 2 * 0.5 + 2 * 0.5) / 8)
    assert m["accuracy"] == pytest.approx(62.5) and m["balanced_acc"] == pytest.approx(100 * (0.75 + 0.5 + 0.5) / 3)
    # Every image is predicted at 0.9 and 5 of 8 are right: one bin, |0.9 - 0.625| = 27.5 points.
    assert m["ece"] == pytest.approx(27.5, abs=1e-4)
    assert m["top5_acc"] == 100.0  # three classes: every label is in the top 5


def test_metrics_match_scikit_learn_on_random_predictions():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=generator)
    labels = torch.randint(0, 7, (500,), generator=generator)
    labels[labels == 6] = 5  # class 6 never occurs: precision 0 by zero_division, left out of balanced accuracy
    classes = [f"c{i}" for i in range(7)]
    ours = classification_metrics(logits, labels, classes)
    predictions = logits.argmax(1).numpy()
    theirs = sklearn_metrics.classification_report(
        labels.numpy(), predictions, labels=list(range(7)), target_names=classes, output_dict=True, zero_division=0
    )
    for name in classes:
        for key in ("precision", "recall", "f1"):
            assert ours["per_class"][name][key] == pytest.approx(
                100 * theirs[name][f"{key}-score" if key == "f1" else key]
            )
        assert ours["per_class"][name]["support"] == theirs[name]["support"]
    for kind, their_kind in (("macro", "macro avg"), ("weighted", "weighted avg")):
        assert ours[kind]["f1"] == pytest.approx(100 * theirs[their_kind]["f1-score"])
        assert ours[kind]["precision"] == pytest.approx(100 * theirs[their_kind]["precision"])
    assert ours["balanced_acc"] == pytest.approx(100 * sklearn_metrics.balanced_accuracy_score(labels, predictions))
    top5 = sklearn_metrics.top_k_accuracy_score(labels.numpy(), logits.numpy(), k=5, labels=list(range(7)))
    assert top_k_accuracy(logits, labels, 5) == pytest.approx(100 * top5)


def test_ece_of_two_known_bins():
    # 100 images at confidence 0.95, all right (gap 0.05); 100 at 0.55, 30 right (gap 0.25): ECE 15 points.
    labels = torch.zeros(200, dtype=torch.long)
    predictions = [0] * 100 + [0] * 30 + [1] * 70
    logits = torch.cat([one_hot_logits(predictions[:100], 2, 0.95), one_hot_logits(predictions[100:], 2, 0.55)])
    assert expected_calibration_error(logits, labels) == pytest.approx(15.0, abs=1e-4)
    assert expected_calibration_error(one_hot_logits([0] * 10, 2, 1 - 1e-9), labels[:10]) == pytest.approx(0, abs=1e-4)


def test_temperature_scaling_recovers_a_known_overconfidence():
    """Labels drawn from softmax(z); the model reports 3z. The fitted temperature is about 3, it leaves every
    prediction as it was, and the calibration error falls."""
    generator = torch.Generator().manual_seed(1)
    z = 2 * torch.randn(20_000, 10, generator=generator)
    labels = torch.multinomial(z.softmax(1), 1, generator=generator).squeeze(1)
    temperature = fit_temperature(3 * z, labels)
    assert temperature == pytest.approx(3.0, rel=0.05)
    assert torch.equal((3 * z / temperature).argmax(1), (3 * z).argmax(1))
    assert expected_calibration_error(3 * z / temperature, labels) < 0.5 * expected_calibration_error(3 * z, labels)


def test_no_temperature_is_claimed_from_a_validation_split_without_mistakes():
    logits = one_hot_logits([0, 1, 2, 1], 3, 0.6)
    assert fit_temperature(logits, torch.tensor([0, 1, 2, 1])) == 1.0
    assert fit_temperature(logits, torch.tensor([0, 1, 2, 0])) < 1.0  # 3 of 4 right at 0.6: underconfident


def test_shrinking_an_image_enlarged_by_a_whole_factor_gives_it_back(real_dataset):
    """Real CIFAR-10 test images, enlarged 2x to 8x (each pixel repeated), come back pixel for pixel."""
    for k in range(20):
        original = real_dataset.test_images[k].permute(1, 2, 0).numpy()
        for factor in (2, 3, 8):
            enlarged = Image.fromarray(original).resize((32 * factor, 32 * factor), Image.Resampling.NEAREST)
            assert np.array_equal(picture_array(enlarged, 32), original), (k, factor)


def test_a_run_with_a_validation_split_is_calibrated_everywhere(tiny_run, tmp_path):
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["temperature"] > 0 and "val_ece" in r and "val_ece_calibrated" in r for r in rows)
    run = load_run(tiny_run)
    assert run.temperature == rows[run.weights.epoch - 1]["temperature"]
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["test_metrics"]["temperature"] == rows[-1]["temperature"]
    assert set(summary["test_metrics"]) >= {"per_class", "macro", "weighted", "balanced_acc", "top5_acc", "ece"}
    # predict's probabilities are softmax(logits / T), and an enlarged copy gets the same answer
    image = (torch.arange(32 * 32 * 3) % 251).to(torch.uint8).view(32, 32, 3).numpy()
    big = Image.fromarray(image).resize((256, 256), Image.Resampling.NEAREST)
    small_answer, big_answer = run.predict([image, big], top_k=10)
    assert small_answer.top == big_answer.top
    logits = run.model(run.normalizer(torch.from_numpy(image).permute(2, 0, 1)[None]))
    expected = (logits / run.temperature).softmax(1)[0].max().item()
    assert small_answer.top[0][1] == pytest.approx(expected, rel=1e-5)
    # evaluate: the classification report, and the JSON with metrics and reliability bins
    text = run_cli("evaluate", str(tiny_run))
    assert text.returncode == 0 and "precision" in text.stdout and "macro avg" in text.stdout, text.stderr
    assert f"temperature {run.temperature:.3f}" in text.stdout
    report = json.loads(run_cli("evaluate", str(tiny_run), "--json").stdout)
    assert report["temperature"] == run.temperature and len(report["reliability"]) == 15
    assert sum(b["count"] for b in report["reliability"]) == report["test_images"]


def test_exported_probabilities_are_calibrated(tiny_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = tmp_path / "model.onnx"
    assert run_cli("export", str(tiny_run), "--format", "onnx", "--out", str(out)).returncode == 0
    session = ort.InferenceSession(str(out))
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    logits, probabilities = session.run(["logits", "probabilities"], {"images": images.numpy()})
    temperature = json.loads(session.get_modelmeta().custom_metadata_map["temperature"])
    assert temperature == load_run(tiny_run).temperature
    expected = (torch.from_numpy(logits) / temperature).softmax(1)
    assert torch.allclose(torch.from_numpy(probabilities), expected, atol=1e-6)


def test_min_confidence_answers_unknown(tiny_run, tmp_path):
    image = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    for threshold, unknown in (("0", False), ("1", None)):
        done = run_cli("predict", str(tiny_run), str(image), "--json", "--min-confidence", threshold)
        record = json.loads(done.stdout)
        top = record["top"][0]["probability"]
        expected_unknown = unknown if unknown is not None else top < 1.0
        assert (record["predicted"] == "unknown") == expected_unknown, record
    text = run_cli("predict", str(tiny_run), str(image), "--min-confidence", "1")
    assert text.returncode == 0 and ("unknown (below 100.0%)" in text.stdout or "100.0%" in text.stdout)
