"""Generated corruptions do what their names say, deterministically; `cnnlab robustness` writes its
table and plot into the run folder and the report shows them."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import class_images, run_cli
from PIL import Image

from cnnlab.robustness import CORRUPTIONS, SEVERITIES, corrupt


@pytest.fixture(scope="module")
def images():
    x, _ = class_images(8, num_classes=4, seed=5)
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_corruption_is_deterministic_and_grows_with_severity(images, name):
    first = corrupt(images, name, 3, seed=0)
    assert first.dtype == torch.uint8 and first.shape == images.shape
    assert torch.equal(first, corrupt(images, name, 3, seed=0))
    change = [float((corrupt(images, name, s).float() - images.float()).abs().mean()) for s in range(1, SEVERITIES + 1)]
    assert change[0] > 0
    if name not in ("saturate",):  # saturate's severities 1-2 desaturate, 3-5 oversaturate: not one direction
        assert change[-1] > change[0], change


def test_noise_is_redrawn_for_another_seed(images):
    assert not torch.equal(corrupt(images, "gaussian_noise", 2, seed=0), corrupt(images, "gaussian_noise", 2, seed=1))


def test_gaussian_noise_has_the_stated_spread(images):
    grey = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)
    diff = (corrupt(grey, "gaussian_noise", 5).float() - 128) / 255
    assert float(diff.std()) == pytest.approx(0.10, rel=0.05)


def test_brightness_adds_to_the_hsv_value_and_keeps_hue_and_saturation(images):
    out = corrupt(images, "brightness", 5).float() / 255
    x = images.float() / 255
    value, new_value = x.max(dim=1).values, out.max(dim=1).values
    expected = (value + 0.3).clamp(max=1)
    assert torch.allclose(new_value, expected, atol=1 / 255)
    ok = value > 0.2  # where rounding does not dominate, the channel ratios (hue and saturation) stay
    ratio_in = x[:, 0][ok] / value[ok]
    ratio_out = out[:, 0][ok] / new_value[ok]
    assert torch.allclose(ratio_in, ratio_out, atol=0.03)


def test_contrast_and_saturation_follow_their_formulas(images):
    x = images.float() / 255
    mean = x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(
        corrupt(images, "contrast", 5).float() / 255, ((x - mean) * 0.15 + mean).clamp(0, 1), atol=1 / 255
    )
    grey = corrupt(images, "saturate", 2).float() / 255  # saturation * 0.1: nearly grey
    spread = lambda t: (t.max(dim=1).values - t.min(dim=1).values).mean()
    assert spread(grey) < 0.15 * spread(x)


def test_jpeg_compression_is_pillows_encoder_at_the_stated_quality(images):
    out = corrupt(images[:2], "jpeg_compression", 5)
    buffer = io.BytesIO()
    Image.fromarray(images[0].permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=40)
    expected = np.asarray(Image.open(buffer).convert("RGB"))
    assert np.array_equal(out[0].permute(1, 2, 0).numpy(), expected)


def test_robustness_cli_writes_table_plot_and_report_section(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # the shared run stays untouched
    result = run_cli("robustness", str(run), "--corruptions", "gaussian_noise,contrast,pixelate", "--json")
    assert result.returncode == 0, result.stderr
    table = json.loads(result.stdout)
    assert set(table["table"]) == {"gaussian_noise", "contrast", "pixelate"}
    assert all(len(v) == SEVERITIES for v in table["table"].values())
    saved = json.loads((run / "robustness.json").read_text())
    assert saved["table"] == table["table"]
    assert saved["mean_corruption_acc"] == pytest.approx(np.mean([a for v in table["table"].values() for a in v]))
    again = run_cli("robustness", str(run), "--corruptions", "gaussian_noise,contrast,pixelate", "--json")
    assert json.loads(again.stdout)["table"] == table["table"]  # same seed, same numbers
    with Image.open(run / "robustness.png") as im:
        im.load()
    report = run_cli("report", str(run), "--out", str(tmp_path / "r.html"))
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "r.html").read_text()
    assert "Robustness under corruption" in html and "gaussian_noise" in html
    bad = run_cli("robustness", str(run), "--corruptions", "fog")
    assert bad.returncode == 2 and "unknown corruption 'fog'" in bad.stderr
