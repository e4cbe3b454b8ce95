"""Open the trained model (the chapter's promised Section 19.6): first-layer filters, the feature maps
of each stage, and Grad-CAM class evidence.

Stages are found, not hard-coded: the last module at each spatial resolution of the model's
`stage_sequence()` (for SmallCNN, the three stride-2 blocks at 16x16, 8x8 and 4x4). Grad-CAM uses
the last stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import CnnlabError

# A 3x3 filter is an "oriented edge" when most of its energy is spatial contrast with one dominant
# direction, and a "colour blob" when most of it is a difference between channels. On grey images the
# three channels are equal, so a filter sees only their sum: an intensity pattern, never a colour; it is
# an edge, a "spot" (contrast without one direction) or a "brightness" filter (mostly its mean).
EDGE_SPATIAL_SHARE = 0.5
EDGE_COHERENCE = 0.5
BLOB_COLOUR_SHARE = 0.5


def first_conv(model: torch.nn.Module) -> torch.nn.Conv2d:
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            return module
    raise CnnlabError("this model has no convolution to show")


COLOUR_KINDS = ("edge", "colour blob", "mixed")
GREY_KINDS = ("edge", "spot", "brightness")


def classify_filters(weight: torch.Tensor, grayscale: bool = False) -> list[str]:
    """'edge', 'colour blob' or 'mixed' for each filter [out, 3, k, k], by where its energy lies; for a model
    of grey images, 'edge', 'spot' or 'brightness' (grey_filter_kinds).

    Colour: the per-channel means minus their average (a filter that weighs red against blue).
    Spatial: the grey-level pattern minus its mean; its orientation coherence comes from the
    structure tensor of the pattern's gradients (1 = one direction, 0 = none).
    """
    if grayscale:
        return grey_filter_kinds(weight)
    kinds = []
    for w in weight.detach().float().cpu():
        channel_means = w.mean(dim=(1, 2))
        colour = ((channel_means - channel_means.mean()) ** 2).sum() * w[0].numel()
        grey = w.mean(dim=0)
        spatial_pattern = grey - grey.mean()
        spatial = (spatial_pattern**2).sum() * w.shape[0]
        total = (w - w.mean()).pow(2).sum().clamp_min(1e-12)
        gy, gx = torch.gradient(grey)
        jxx, jyy, jxy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
        coherence = torch.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy).clamp_min(1e-12)
        if spatial / total >= EDGE_SPATIAL_SHARE and coherence >= EDGE_COHERENCE:
            kinds.append("edge")
        elif colour / total >= BLOB_COLOUR_SHARE:
            kinds.append("colour blob")
        else:
            kinds.append("mixed")
    return kinds


def grey_filter_kinds(weight: torch.Tensor) -> list[str]:
    """What each filter does to a grey image, whose channels are equal: it applies the channels' sum."""
    kinds = []
    for w in weight.detach().float().cpu():
        seen = w.sum(dim=0)
        pattern = seen - seen.mean()
        share = float((pattern**2).sum() / (seen**2).sum().clamp_min(1e-12))
        gy, gx = torch.gradient(seen)
        jxx, jyy, jxy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
        coherence = float(torch.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy).clamp_min(1e-12))
        if share >= EDGE_SPATIAL_SHARE:
            kinds.append("edge" if coherence >= EDGE_COHERENCE else "spot")
        else:
            kinds.append("brightness")
    return kinds


def stage_modules(model: torch.nn.Module, image_size: int) -> list[tuple[str, torch.nn.Module]]:
    """The last child of the model's stage sequence at each spatial resolution, found by hooking
    every child and running one dry forward pass of the whole model (in eval mode, so that batch-norm
    statistics are not touched)."""
    if not hasattr(model, "stage_sequence"):
        raise CnnlabError(
            f"inspect needs a model that names its stages (a stage_sequence() method, as cnnlab's models "
            f"have); {type(model).__name__} has none"
        )
    sequence = model.stage_sequence()
    sequence_name = next(name for name, module in model.named_modules() if module is sequence)
    sizes = {}
    hooks = [
        child.register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name, tuple(o.shape[-2:])))
        for name, child in sequence.named_children()
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    children = list(sequence.named_children())
    stages = []
    for i, (name, child) in enumerate(children):
        if i == len(children) - 1 or sizes[children[i + 1][0]] != sizes[name]:
            stages.append((f"{sequence_name}.{name} ({sizes[name][0]}x{sizes[name][1]})", child))
    return stages


def feature_maps(model: torch.nn.Module, x: torch.Tensor, image_size: int) -> list[tuple[str, torch.Tensor]]:
    """Each stage's output [N, C, h, w] for the normalised batch x."""
    outputs = []
    hooks = [
        module.register_forward_hook(lambda m, i, o, name=name: outputs.append((name, o.detach().float())))
        for name, module in stage_modules(model, image_size)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def grad_cam(model: torch.nn.Module, x: torch.Tensor, classes: list[int], image_size: int) -> torch.Tensor:
    """Grad-CAM heatmaps [N, H, W] in [0, 1] at the input's resolution, one per image for its class.

    The last stage's channels are weighted by the spatial mean of the class score's gradient, summed,
    rectified, upsampled bilinearly and scaled to a maximum of 1 (Selvaraju et al., 2017).
    """
    _, layer = stage_modules(model, image_size)[-1]
    saved = {}

    def keep(module, inputs, output):
        output.retain_grad()
        saved["activation"] = output

    hook = layer.register_forward_hook(keep)
    try:
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            logits = model(x.clone().requires_grad_(True))
            score = logits.gather(1, torch.as_tensor(classes, device=logits.device).view(-1, 1)).sum()
            score.backward()
    finally:
        hook.remove()
    activation = saved["activation"]
    weights = activation.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
    model.zero_grad(set_to_none=True)
    return cam / peak


@dataclass
class Inspection:
    """What `inspect` found; the figures are written beside the run's other plots."""

    filter_kinds: list[str]
    figures: list[Path]
    images: list[dict]  # per chosen image: label, predicted class and confidence
    grayscale: bool = False

    def summary(self) -> str:
        count = self.filter_kinds.count
        if self.grayscale:
            return (
                f"first-layer filters: {len(self.filter_kinds)}, read as intensity patterns (the images are grey, "
                f"so differences between channels see nothing): {count('edge')} oriented edges, {count('spot')} "
                f"spots without one direction, {count('brightness')} mostly overall brightness"
            )
        return (
            f"first-layer filters: {len(self.filter_kinds)}, of which {count('edge')} look like oriented edges, "
            f"{count('colour blob')} like colour blobs and {count('mixed')} mix both"
        )


def inspect_model(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: list[int | None],
    names: list[str],
    classes: list[str],
    mean,
    std,
    out_dir: Path,
    grayscale: bool = False,
) -> Inspection:
    """Draw filters.png, feature_maps.png and gradcam.png for uint8 `images` [N, 3, H, W]; `grayscale`: the
    model was trained on grey images (Dataset.grayscale), so its filters are read as intensity patterns."""
    from .inspect_plots import plot_feature_maps, plot_filters, plot_gradcam
    from .loader import Normalizer

    model = model.eval()
    image_size = images.shape[-1]
    x = Normalizer(tuple(mean), tuple(std))(images)
    with torch.no_grad():
        probabilities = model(x).float().softmax(dim=1)
    predicted = probabilities.argmax(dim=1).tolist()
    weight = first_conv(model).weight
    kinds = classify_filters(weight, grayscale)
    maps = feature_maps(model, x, image_size)
    cam_predicted = grad_cam(model, x, predicted, image_size)
    truths = [label if label is not None else p for label, p in zip(labels, predicted)]
    cam_true = grad_cam(model, x, truths, image_size)
    info = [
        {
            "image": name,
            "label": classes[label] if label is not None else None,
            "predicted": classes[p],
            "confidence": float(probabilities[i, p]),
        }
        for i, (name, label, p) in enumerate(zip(names, labels, predicted))
    ]
    figures = [
        plot_filters(weight, kinds, out_dir / "filters.png"),
        plot_feature_maps(images, maps, names, out_dir / "feature_maps.png"),
        plot_gradcam(images, cam_predicted, cam_true, info, out_dir / "gradcam.png"),
    ]
    return Inspection(kinds, figures, info, grayscale)
