"""The figures of model inspection (`cnnlab inspect`): first-layer filters, feature maps and Grad-CAM
class evidence. The run and audit figures are in plots.py, whose figure helpers these share."""

from __future__ import annotations

from pathlib import Path

import torch

from .plots import _figure, _image, _save


def plot_filters(weight: torch.Tensor, kinds: list[str], path: Path) -> Path:
    """First-layer filters as RGB tiles, each stretched to its own range, labelled with its kind."""
    w = weight.detach().float().cpu()
    low = w.flatten(1).min(dim=1).values.view(-1, 1, 1, 1)
    high = w.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
    tiles = ((w - low) / (high - low).clamp_min(1e-12) * 255).round().to(torch.uint8)
    columns = 8
    rows = -(-len(tiles) // columns)
    fig = _figure(1.3 * columns, 1.45 * rows + 0.6)
    axes = fig.subplots(rows, columns, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(tiles):
            ax.axis("off")
            continue
        _image(ax, tiles[k])
        ax.set_title(kinds[k], fontsize=7)
    plural = {
        "edge": "edges",
        "colour blob": "colour blobs",
        "mixed": "mixed",
        "spot": "spots",
        "brightness": "brightness",
    }
    counts = ", ".join(f"{kinds.count(k)} {plural[k] if kinds.count(k) != 1 else k}" for k in plural if k in kinds)
    fig.suptitle(
        f"First-layer filters ({len(tiles)}, {w.shape[-1]}x{w.shape[-1]}, each scaled to its own range): {counts}",
        fontsize=9,
    )
    return _save(fig, path)


def plot_feature_maps(
    images: torch.Tensor, maps: list[tuple[str, torch.Tensor]], names: list[str], path: Path, channels: int = 4
) -> Path:
    """Per image: the image, then for each stage its `channels` most active channels."""
    columns = 1 + len(maps) * channels
    fig = _figure(0.95 * columns, 1.15 * len(images) + 0.8)
    axes = fig.subplots(len(images), columns, squeeze=False)
    for i in range(len(images)):
        _image(axes[i, 0], images[i])
        axes[i, 0].set_title(Path(names[i]).name[:14], fontsize=6)
        for s, (stage, output) in enumerate(maps):
            strongest = output[i].mean(dim=(1, 2)).argsort(descending=True)[:channels]
            for c, channel in enumerate(strongest):
                ax = axes[i, 1 + s * channels + c]
                ax.imshow(output[i, channel].numpy(), cmap="viridis", interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"{stage.split(' ')[1] if c == 0 else ''}\nch {int(channel)}", fontsize=6)
    fig.suptitle(
        "Feature maps: the most active channels of each stage (" + ", ".join(s for s, _ in maps) + ")", fontsize=9
    )
    return _save(fig, path)


def plot_gradcam(
    images: torch.Tensor, cam_predicted: torch.Tensor, cam_true: torch.Tensor, info: list[dict], path: Path
) -> Path:
    """Per image: the image, Grad-CAM for the predicted class, and for the true class, overlaid."""
    fig = _figure(6.6, 2.2 * len(images) + 0.5)
    axes = fig.subplots(len(images), 3, squeeze=False)
    for i in range(len(images)):
        _image(axes[i, 0], images[i])
        label = info[i]["label"]
        axes[i, 0].set_title(f"{Path(info[i]['image']).name[:18]}" + (f"\ntrue {label}" if label else ""), fontsize=7)
        for ax, cam, title in (
            (
                axes[i, 1],
                cam_predicted[i],
                f"evidence for {info[i]['predicted']}\n(predicted, {100 * info[i]['confidence']:.0f}%)",
            ),
            (axes[i, 2], cam_true[i], f"evidence for {label}\n(true class)" if label else "no true class given"),
        ):
            _image(ax, images[i])
            ax.imshow(cam.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
            ax.set_title(title, fontsize=7)
    fig.suptitle("Class evidence (Grad-CAM on the last stage)", fontsize=9)
    return _save(fig, path)
