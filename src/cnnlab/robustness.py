"""Accuracy under corruption, in the manner of CIFAR-10-C (Hendrycks & Dietterich, 2019).

The corruptions are generated here, on the fly, with the published severity parameters for 32x32
images; they are not the published CIFAR-10-C files (whose noise draws differ, and which start from
the canonical PNG-quality images). Every draw comes from a generator seeded per corruption and
severity, so a run's table is the same each time. Images go in and out as uint8, as the published
files are stored.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import CnnlabError
from .images import all_grey

SEVERITIES = 5


def _noise_gaussian(x, c, g):
    return x + c * torch.randn(x.shape, generator=g)


def _noise_shot(x, c, g):
    return torch.poisson(x * c, generator=g) / c


def _noise_impulse(x, c, g):
    """Salt and pepper on a `c` share of the values, half of each (skimage's 's&p' mode)."""
    hit = torch.rand(x.shape, generator=g) < c
    salt = torch.rand(x.shape, generator=g) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def _gaussian_blur(x, sigma, g):
    radius = max(1, int(4 * sigma + 0.5))  # skimage's default truncation at 4 sigma
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
    padded = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(padded, kernel, groups=3)
    padded = F.pad(x, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(padded, kernel.transpose(2, 3), groups=3)


def _hsv_value_and_saturation(x):
    value = x.max(dim=1, keepdim=True).values
    low = x.min(dim=1, keepdim=True).values
    saturation = torch.where(value > 0, (value - low) / value.clamp_min(1e-12), torch.zeros_like(value))
    return value, saturation


def _brightness(x, c, g):
    """HSV value + c. With hue and saturation fixed, RGB scales with the value (black turns grey)."""
    value, _ = _hsv_value_and_saturation(x)
    new_value = (value + c).clamp(0, 1)
    return torch.where(value > 0, x * new_value / value.clamp_min(1e-12), new_value.expand_as(x))


def _saturate(x, c, g):
    """HSV saturation * c[0] + c[1]. With hue and value fixed, each channel's distance below the
    value scales with the saturation (a grey pixel has no hue, and stays grey)."""
    value, saturation = _hsv_value_and_saturation(x)
    new_saturation = (saturation * c[0] + c[1]).clamp(0, 1)
    ratio = torch.where(saturation > 0, new_saturation / saturation.clamp_min(1e-12), torch.ones_like(saturation))
    return value - (value - x) * ratio


def _contrast(x, c, g):
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * c + mean


def _jpeg(x, quality, g):
    out = []
    for image in (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        out.append(np.asarray(Image.open(buffer).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


def _pixelate(x, c, g):
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(int(h * c), int(w * c)), mode="area")  # PIL's BOX down
    return F.interpolate(small, size=(h, w), mode="area")  # and BOX up: each pixel averages those it overlaps


@dataclass(frozen=True)
class Corruption:
    name: str
    apply: object  # (x in [0, 1] float [N, 3, H, W], parameter, generator) -> x
    parameters: tuple  # one per severity, 1 to 5


CORRUPTIONS = {
    c.name: c
    for c in (
        Corruption("gaussian_noise", _noise_gaussian, (0.04, 0.06, 0.08, 0.09, 0.10)),
        Corruption("shot_noise", _noise_shot, (500, 250, 100, 75, 50)),
        Corruption("impulse_noise", _noise_impulse, (0.01, 0.02, 0.03, 0.05, 0.07)),
        Corruption("gaussian_blur", _gaussian_blur, (0.4, 0.6, 0.7, 0.8, 1.0)),
        Corruption("brightness", _brightness, (0.05, 0.1, 0.15, 0.2, 0.3)),
        Corruption("contrast", _contrast, (0.75, 0.5, 0.4, 0.3, 0.15)),
        Corruption("saturate", _saturate, ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))),
        Corruption("jpeg_compression", _jpeg, (80, 65, 58, 50, 40)),
        Corruption("pixelate", _pixelate, (0.95, 0.9, 0.85, 0.75, 0.65)),
    )
}


# Corruptions that change colour only: on grey images they are the identity, and an accuracy under them
# would be the clean accuracy reported as robustness.
COLOUR_ONLY = {"saturate": "the images are grey, and changing saturation leaves a grey image as it is"}


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> the same images under corruption `name` at `severity` (1-5), as uint8."""
    corruption = CORRUPTIONS[name]
    # One generator per (corruption, severity): adding a corruption never changes another one's draws.
    stream = seed * 1000 + list(CORRUPTIONS).index(name) * 10 + severity
    generator = torch.Generator().manual_seed(stream)
    x = images.cpu().float() / 255
    out = corruption.apply(x, corruption.parameters[severity - 1], generator)
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


def robustness_table(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    accuracy_of,
    names: list[str] | None = None,
    seed: int = 0,
    progress=None,
) -> dict:
    """Accuracy on the clean images and under each corruption and severity.

    `accuracy_of(model, uint8 images, labels) -> percent` does the evaluation (normalisation, batches,
    device). Returns {clean_acc, table: {name: [acc at severity 1..5]}, mean_corruption_acc,
    mean_by_severity, seed}: the mean is over every corruption and severity, as CIFAR-10-C reports it.
    """
    names = names or list(CORRUPTIONS)
    grey = all_grey(images)
    skipped = {n: COLOUR_ONLY[n] for n in names if grey and n in COLOUR_ONLY}
    names = [n for n in names if n not in skipped]
    if not names:
        raise CnnlabError(f"every corruption asked for changes colour only ({', '.join(skipped)}); the images are grey")
    table = {}
    for name in names:
        table[name] = []
        for severity in range(1, SEVERITIES + 1):
            table[name].append(accuracy_of(model, corrupt(images, name, severity, seed), labels))
            if progress:
                progress(name, severity, table[name][-1])
    every = [a for accs in table.values() for a in accs]
    return {
        "clean_acc": accuracy_of(model, images, labels),
        "table": table,
        "mean_corruption_acc": sum(every) / len(every),
        "mean_by_severity": [sum(table[n][s] for n in names) / len(names) for s in range(SEVERITIES)],
        "seed": seed,
        "corruptions": names,
        "skipped": skipped,
    }


def format_table(result: dict) -> str:
    lines = [
        f"{'corruption':<18}" + "".join(f"{'sev ' + str(s):>8}" for s in range(1, SEVERITIES + 1)) + f"{'mean':>8}"
    ]
    for name, accs in result["table"].items():
        lines.append(f"{name:<18}" + "".join(f"{a:8.2f}" for a in accs) + f"{sum(accs) / len(accs):8.2f}")
    lines.append(
        f"{'mean':<18}"
        + "".join(f"{a:8.2f}" for a in result["mean_by_severity"])
        + f"{result['mean_corruption_acc']:8.2f}"
    )
    lines.append(
        f"clean accuracy {result['clean_acc']:.2f}%, mean corruption accuracy {result['mean_corruption_acc']:.2f}% "
        f"(generated corruptions, seed {result['seed']}; not the published CIFAR-10-C files)"
    )
    return "\n".join(lines)


def measure_robustness(run, data, names: list[str] | None = None, seed: int = 0, progress=None) -> dict:
    """The robustness table of `run` (openrun.Run) on `data`'s test split, written into the run folder as
    robustness.json and robustness.png (the report shows them), with the weights used."""
    import json

    from .device import tune_cpu_allocator
    from .evaluate import EVAL_BATCH_SIZE, evaluate
    from .loader import Loader
    from .plots import plot_robustness
    from .runs import atomic_write_bytes

    device = next(run.model.parameters()).device
    if device.type == "cpu":
        tune_cpu_allocator()  # 46 passes over the test set: keep freed batches in the heap

    def accuracy_of(model, images, labels):
        return evaluate(model, Loader(images, labels, EVAL_BATCH_SIZE, run.normalizer, device=device))["acc"]

    result = robustness_table(run.model, data.test_images, data.test_labels, accuracy_of, names, seed, progress)
    result["data"], result["weights"] = data.source, run.weights.describe()
    atomic_write_bytes(run.folder / "robustness.json", json.dumps(result, indent=1).encode())
    plot_robustness(result, run.folder / "robustness.png")
    return result
