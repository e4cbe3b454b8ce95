"""Grey datasets: said in the config, read as intensity patterns, and spared colour-only corruptions."""

from __future__ import annotations

import json

import torch
from conftest import run_cli, write_image_folder
from PIL import Image

from cnnlab.augment import color_jitter
from cnnlab.data import load_dataset
from cnnlab.inspect import classify_filters


def write_grey_folder(root):
    write_image_folder(root, n_train_per_class=8, n_test_per_class=3)
    for path in root.rglob("*.png"):
        Image.open(path).convert("L").save(path)
    return root


def test_hand_built_filters_read_as_edges_spots_and_brightness_on_grey_images():
    edge = torch.tensor([[1.0, 1, 1], [0, 0, 0], [-1, -1, -1]])
    spot = torch.tensor([[-1.0, -1, -1], [-1, 8, -1], [-1, -1, -1]])
    flat = torch.ones(3, 3)
    red_against_blue = torch.stack([flat, torch.zeros(3, 3), -flat])  # colour only: on grey images it sees nothing
    weight = torch.stack([edge.expand(3, 3, 3), spot.expand(3, 3, 3), flat.expand(3, 3, 3) + 0.01 * edge])
    assert classify_filters(weight, grayscale=True) == ["edge", "spot", "brightness"]
    assert classify_filters(red_against_blue[None]) == ["colour blob"]


def test_colour_jitter_keeps_grey_images_grey():
    grey = torch.rand(16, 1, 8, 8).expand(16, 3, 8, 8).contiguous()
    jittered = color_jitter(grey, 0.4, torch.Generator().manual_seed(0))
    assert torch.allclose(jittered[:, 0], jittered[:, 1], atol=1e-5) and torch.allclose(
        jittered[:, 1], jittered[:, 2], atol=1e-5
    )


def test_a_grey_run_says_so_and_its_commands_treat_it_as_grey(tmp_path):
    data = write_grey_folder(tmp_path / "grey")
    assert load_dataset(str(data), progress=False).grayscale
    assert not load_dataset(str(write_image_folder(tmp_path / "colour")), progress=False).grayscale
    runs = tmp_path / "runs"
    done = run_cli(
        "train", "--data", str(data), "--epochs", "1", "--color-jitter", "0.3", "--runs-dir", str(runs),
        "--name", "g", "--no-plots", "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "colour jitter acts as brightness and contrast only" in done.stderr
    assert json.loads((runs / "g" / "config.json").read_text())["data"]["grayscale"] is True
    robust = run_cli("robustness", str(runs / "g"), "--corruptions", "saturate,brightness")
    assert robust.returncode == 0, robust.stderr
    assert "saturate skipped: the images are grey" in robust.stdout
    table = json.loads((runs / "g" / "robustness.json").read_text())
    assert list(table["table"]) == ["brightness"] and "saturate" in table["skipped"]
    only_colour = run_cli("robustness", str(runs / "g"), "--corruptions", "saturate")
    assert only_colour.returncode == 1 and "changes colour only" in only_colour.stderr
    inspected = run_cli("inspect", str(runs / "g"), "--out-dir", str(tmp_path / "inspect"))
    assert inspected.returncode == 0 and "read as intensity patterns" in inspected.stdout, inspected.stderr
