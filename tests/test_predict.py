"""`cnnlab predict` and test-time augmentation: same decisions as `evaluate`, bad files named and skipped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import CLASSES, real_test_files, run_cli
from PIL import Image

from cnnlab.evaluate import TTA_VIEWS, evaluate, shift, tta_logits
from cnnlab.loader import Loader, Normalizer
from cnnlab.recipe import TTA_VIEW_SETS
from cnnlab.runfiles import load_checkpoint, model_from_checkpoint


def evaluate_decisions(run, data):
    checkpoint = load_checkpoint(run / "best.pt")
    model = model_from_checkpoint(checkpoint)
    loader = Loader(
        data.test_images,
        data.test_labels,
        500,
        Normalizer(tuple(checkpoint["mean"]), tuple(checkpoint["std"])),
        device="cpu",
    )
    return evaluate(model, loader)["predictions"]


def test_predict_decides_as_evaluate_does_on_real_cifar10_test_images(tiny_run, real_dataset, tmp_path):
    files = real_test_files(tmp_path, per_class=3)
    result = run_cli("predict", str(tiny_run), *[str(f) for f, _ in files], "--json", "--top-k", "3")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(l) for l in result.stdout.splitlines()]
    assert [l["image"] for l in lines] == [str(f) for f, _ in files]
    decided = evaluate_decisions(tiny_run, real_dataset)
    flat = real_dataset.test_images.flatten(1)
    from cnnlab.images import decode_image

    for (file, _), line in zip(files, lines):
        pixels = torch.from_numpy(decode_image(file, str(file), 32).copy()).permute(2, 0, 1).flatten()
        (index,) = (flat == pixels).all(dim=1).nonzero().flatten().tolist()  # the same test image in the dataset
        assert line["predicted"] == real_dataset.classes[int(decided[index])]
        probabilities = [t["probability"] for t in line["top"]]
        assert probabilities == sorted(probabilities, reverse=True) and len(probabilities) == 3


def test_predict_table_folders_and_any_size(tiny_run, tmp_path):
    folder = tmp_path / "pictures"
    (folder / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(folder / "big.jpg")
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(folder / "nested" / "grey.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.webp")
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    result = run_cli("predict", str(tiny_run), str(folder), "--top-k", "2")
    assert result.returncode == 0, result.stderr
    weights, *lines = result.stdout.splitlines()
    assert weights.startswith("weights: ") and "best.pt (epoch 4, chosen on val_acc)" in weights  # said first
    assert len(lines) == 3 and all(l.count("%") == 2 for l in lines)
    assert {l.split("  ")[0].split("/")[-1] for l in lines} == {"big.jpg", "grey.png", "alpha.webp"}


def test_bad_files_are_named_and_skipped(tiny_run, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((32, 32, 3), 120, dtype=np.uint8)).save(good)
    not_image = tmp_path / "fake.png"
    not_image.write_text("hello")
    truncated = tmp_path / "truncated.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 Mpx, a few kB on disk
    missing = tmp_path / "missing.jpg"
    bad = [not_image, truncated, empty, bomb, missing]
    result = run_cli("predict", str(tiny_run), str(good), *map(str, bad), "--json")
    assert result.returncode == 1
    records = [json.loads(l) for l in result.stdout.splitlines()]
    assert [r["image"] for r in records] == [str(good), *map(str, bad)]  # every file answered, in order
    assert "predicted" in records[0] and all("error" in r and "predicted" not in r for r in records[1:])
    errors = [l for l in result.stderr.splitlines() if "error:" in l]
    assert len(errors) == len(bad) and "Traceback" not in result.stderr
    for path, line in zip(bad, errors):
        assert str(path) in line
    assert "0 bytes" in errors[2] and "decompression-bomb" in errors[3] and "no such file" in errors[4]
    assert "5 of 6 files could not be read" in result.stderr


def test_a_checkpoint_of_another_class_count_is_refused(tiny_run, tmp_path):
    import torch as t

    payload = load_checkpoint(tiny_run / "best.pt")
    payload["num_classes"], payload["classes"] = 4, CLASSES[:4]
    t.save(payload, tmp_path / "other.pt")
    picture = tmp_path / "p.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(picture)
    result = run_cli("predict", str(tmp_path / "other.pt"), str(picture))
    assert result.returncode == 1 and "do not fit model 'smallcnn' with 4 classes" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_tta_views_and_their_mean():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    assert torch.equal(shift(x, 0, 1)[..., 1:], x[..., :-1])  # moved one pixel right
    assert torch.equal(shift(x, -1, 0)[..., :-1, :], x[..., 1:, :])  # moved one pixel up
    assert torch.equal(shift(x, 0, 1)[..., 0], x[..., 1])  # the uncovered column is a reflection, not black
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(75, 4))
    mirrored = lambda dy, dx: model(shift(x, dy, dx)) + model(shift(x.flip(-1), dy, dx))
    ten = sum(mirrored(dy, dx) for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))) / 10
    assert torch.allclose(tta_logits(model, x), ten)
    assert torch.allclose(tta_logits(model, x, "shifts"), ten)
    six = (2 * mirrored(0, 0) + mirrored(-1, -1) + mirrored(1, 1)) / 8  # airbench's: the image weighs half
    assert torch.allclose(tta_logits(model, x, "diagonals"), six)
    assert set(TTA_VIEWS) == set(TTA_VIEW_SETS)  # every set a recipe may name exists


@pytest.mark.parametrize("views", list(TTA_VIEWS))
def test_tta_takes_the_image_as_it_is_from_a_plain_evaluation_handed_to_it(views):
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (70, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(70) % 4
    loader = Loader(images, labels, 32, Normalizer((0.5,) * 3, (0.25,) * 3), device="cpu")  # batches 32, 32, 6
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4))
    plain = evaluate(model, loader)
    full, reused = evaluate(model, loader, tta=True, views=views), evaluate(model, loader, True, views, plain)
    assert torch.allclose(reused["logits"], full["logits"], atol=1e-6)  # the same views, one pass fewer
    zeroed = evaluate(model, loader, True, views, {**plain, "logits": torch.zeros_like(plain["logits"])})
    weight = dict(TTA_VIEWS[views])[(0, 0)] / (2 * sum(w for _, w in TTA_VIEWS[views]))
    assert torch.allclose(zeroed["logits"], full["logits"] - weight * plain["logits"], atol=1e-6)  # taken, not rerun
    with pytest.raises(RuntimeError, match="not of this loader's images"):
        evaluate(model, loader, True, views, {**plain, "labels": plain["labels"].flip(0)})


def test_evaluate_and_predict_accept_tta(tiny_run, archive, tmp_path):
    plain = json.loads(run_cli("evaluate", str(tiny_run), "--json").stdout)
    with_tta = run_cli("evaluate", str(tiny_run), "--json", "--tta")
    assert with_tta.returncode == 0, with_tta.stderr
    report = json.loads(with_tta.stdout)
    assert report["tta"] is True and plain["tta"] is False and report["test_images"] == plain["test_images"]
    picture = tmp_path / "p.png"
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(picture)
    predicted = run_cli("predict", str(tiny_run), str(picture), "--tta", "--json")
    assert predicted.returncode == 0 and json.loads(predicted.stdout)["predicted"] in CLASSES


def test_evaluate_with_tta_repeats_the_view_set_the_run_was_scored_with(archive, tmp_path):
    from cnnlab.recipe_files import load_recipe
    from cnnlab.train import train

    options = {"epochs": 1, "batch_size": 32, "warmup_epochs": 0.5, "precision": "fp32", "tta_precision": "fp32"}
    recipe = load_recipe("speedrun-cpu", {**options, "tta_views": "diagonals", "eval_batch_size": 250})
    result = train(recipe, str(archive), data_root=tmp_path, runs_dir=tmp_path / "runs", progress=False, plots=False)
    report = run_cli("evaluate", str(result.run_dir), "--data", str(archive), "--json", "--tta")
    assert report.returncode == 0, report.stderr
    report = json.loads(report.stdout)
    assert report["tta_views"] == "diagonals"
    assert report["test_acc"] == result.summary["final_tta_test_acc"]
    assert report["test_loss"] == pytest.approx(result.rows[-1]["tta_test_loss"], rel=1e-5)
