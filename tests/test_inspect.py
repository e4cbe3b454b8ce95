"""Filters, feature maps and Grad-CAM: shapes, and evidence that moves with the object."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from cnnlab.inspect import classify_filters, feature_maps, grad_cam, stage_modules
from cnnlab.loader import Normalizer
from cnnlab.models.smallcnn import SmallCNN


def test_filter_kinds_on_constructed_filters():
    vertical_edge = torch.tensor([[-1.0, 0, 1]] * 3).expand(3, 3, 3)
    diagonal_edge = torch.tensor([[0.0, 1, 2], [-1, 0, 1], [-2, -1, 0]]).expand(3, 3, 3)
    red_against_blue = torch.stack([torch.ones(3, 3), torch.zeros(3, 3), -torch.ones(3, 3)])
    weight = torch.stack([vertical_edge, diagonal_edge, red_against_blue])
    assert classify_filters(weight) == ["edge", "edge", "colour blob"]


def test_stages_and_feature_map_shapes():
    model = SmallCNN(10).eval()
    stages = stage_modules(model, 32)
    assert [name.split(" ")[1] for name, _ in stages] == ["(32x32)", "(16x16)", "(8x8)", "(4x4)"]
    maps = feature_maps(model, torch.randn(2, 3, 32, 32), 32)
    assert [tuple(m.shape) for _, m in maps] == [(2, 32, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8), (2, 128, 4, 4)]


def test_the_speedrun_network_is_inspected_through_its_stages_without_touching_its_statistics():
    from cnnlab.models import build_model

    model = build_model("speedrun-small", 10).train()
    model.initialise_from_data(torch.randn(64, 3, 32, 32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stages = stage_modules(model, 32)
    assert [name.split(" ")[0] for name, _ in stages] == ["stages.0", "stages.1", "stages.2"]
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    maps = feature_maps(model.eval(), torch.randn(2, 3, 32, 32), 32)
    assert [m.shape[1] for _, m in maps] == [32, 128, 128]
    assert [m.shape[-1] for _, m in maps] == sorted((m.shape[-1] for _, m in maps), reverse=True)
    cam = grad_cam(model, torch.randn(2, 3, 32, 32), [1, 2], 32)
    assert cam.shape == (2, 32, 32)


class RedBlueDetector(torch.nn.Module):
    """A network whose evidence is known by construction, so the test holds whatever a CPU's training would
    give: its first stage measures redness (channel 0: red minus blue) and blueness (channel 1) per pixel,
    a second stage halves the resolution, and each class's logit is its channel's mean."""

    def __init__(self):
        super().__init__()
        conv = torch.nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor([[1.0, 0, -1], [-1, 0, 1]]).view(2, 3, 1, 1))
            conv.bias.zero_()
        self.features = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.AvgPool2d(2))
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.classifier = torch.nn.Linear(2, 2)
        with torch.no_grad():
            self.classifier.weight.copy_(10 * torch.eye(2))
            self.classifier.bias.zero_()

    def stage_sequence(self):
        return self.features

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def test_grad_cam_evidence_moves_with_the_object():
    model, mean, std = RedBlueDetector().eval(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    images = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)
    images[0, :, 12:20, 2:10] = torch.tensor([220, 30, 30]).view(3, 1, 1)  # red patch on the left
    images[1, :, 12:20, 22:30] = torch.tensor([220, 30, 30]).view(3, 1, 1)  # the same patch on the right
    x = Normalizer(mean, std)(images)
    with torch.no_grad():
        assert model(x).argmax(dim=1).tolist() == [0, 0]
    cam = grad_cam(model, x, [0, 0], 32)
    assert cam.shape == (2, 32, 32) and float(cam.min()) >= 0 and float(cam.max()) == pytest.approx(1.0)
    left, right = cam[:, :, :16].sum(dim=(1, 2)), cam[:, :, 16:].sum(dim=(1, 2))
    assert left[0] > 1.5 * right[0], (left, right)
    assert right[1] > 1.5 * left[1], (left, right)


def test_inspect_command_writes_its_figures(tiny_run, tmp_path):
    picture = tmp_path / "mine.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(picture)
    out = tmp_path / "inspected"
    result = run_cli(
        "inspect",
        str(tiny_run),
        "--test-index",
        "0",
        "--test-index",
        "5",
        "--image",
        str(picture),
        "--out-dir",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "first-layer filters: 32, of which" in result.stdout and "mine.png: predicted" in result.stdout
    for name in ("filters.png", "feature_maps.png", "gradcam.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG"
    with Image.open(out / "gradcam.png") as image:
        assert image.height > image.width  # one row per image: three rows


def test_inspect_rejects_a_bad_index(tiny_run, tmp_path):
    result = run_cli("inspect", str(tiny_run), "--test-index", "100000", "--out-dir", str(tmp_path))
    assert result.returncode == 2 and "out of range" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
