"""Point a trained model at any image files: decoded, resized and normalised exactly as in training
(images.decode_image, the checkpoint's mean and std), then the top-k classes with probabilities.

A file that cannot be read gets its own error and is skipped; the rest of the batch goes on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import CnnlabError, UsageError
from .images import IMAGE_EXTENSIONS, decode_image
from .names import portable, shown
from .sourcefiles import regular_file

UNKNOWN = "unknown"  # the answer below --min-confidence


def check_min_confidence(value: float | None) -> None:
    if value is not None and not 0 <= value <= 1:  # also refuses NaN
        raise UsageError(
            f"min_confidence must be a probability from 0 to 1 (got {value})", parameters=("min_confidence",)
        )


def mark_unknown(predictions: list, min_confidence: float | None) -> list:
    """Predictions whose top probability is below `min_confidence` answer UNKNOWN (their top-k is kept)."""
    for p in predictions:
        p.unknown = min_confidence is not None and p.top is not None and p.top[0][1] < min_confidence
    return predictions


@dataclass
class Prediction:
    image: str  # the path as given or found (any bytes the OS allows)
    top: list[tuple[str, float]] | None = None  # (class, probability), most likely first
    error: str | None = None  # why it could not be read: a failure
    skipped: str | None = None  # why a file found in a folder is not an image: not a failure
    unknown: bool = False  # the top probability was below the min_confidence asked for

    @property
    def predicted(self) -> str | None:
        return None if self.top is None else UNKNOWN if self.unknown else self.top[0][0]

    def to_dict(self) -> dict:
        image = portable(self.image)
        if self.error or self.skipped:
            return {"image": image, **({"error": self.error} if self.error else {"skipped": self.skipped})}
        return {
            "image": image,
            "predicted": self.predicted,
            "top": [{"class": c, "probability": p} for c, p in self.top],
        }


URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def collect_images(paths: list[str | Path]) -> list[Prediction]:
    """Every path given, in order, as a Prediction still to be made: files as given (any extension: Pillow
    decides), folders searched recursively for image files, hidden ones left out. What cannot be an image
    is answered here: a URL (not fetched), a missing path, or a folder's file that is not an image (skipped)."""
    found = []
    for raw in paths:
        path = Path(raw)
        if URL.match(str(raw)):
            found.append(
                Prediction(
                    str(raw),
                    error=f"{shown(raw)}: URLs are not fetched; download the image first "
                    "(for example with curl -O) and pass the file",
                )
            )
        elif path.is_dir():
            found += _folder_images(path)
        else:
            found.append(Prediction(str(path)))  # a missing or special file is reported in its turn, with the others
    return found


def _folder_images(folder: Path) -> list[Prediction]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(n for n in filenames if not n.startswith(".")):
            file = os.path.join(dirpath, name)
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Prediction(file))
            else:
                found.append(
                    Prediction(file, skipped=f"not an image file (cnnlab reads {', '.join(IMAGE_EXTENSIONS)})")
                )
    return found


def load_images(files: list[Path], image_size: int) -> tuple[torch.Tensor, list[Path], list[Prediction]]:
    """uint8 [N, 3, S, S] of the readable files, the files it holds, and an error per unreadable one."""
    arrays, kept, failed = [], [], []
    for file in files:
        try:
            regular_file(file, shown(file))
            if file.stat().st_size == 0:
                raise CnnlabError(f"{shown(file)}: empty file (0 bytes); remove it or replace it")
            arrays.append(decode_image(file, shown(file), image_size))
            kept.append(file)
        except CnnlabError as e:
            failed.append(Prediction(str(file), error=str(e)))
    images = (
        torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        if arrays
        else torch.zeros(0, 3, image_size, image_size, dtype=torch.uint8)
    )
    return images, kept, failed


@torch.no_grad()
def predict_images(
    run, images: torch.Tensor, top_k: int = 3, tta: bool = False, batch_size: int = 256
) -> list[list[tuple[str, float]]]:
    """The top-k (class, probability) of each uint8 image [N, 3, S, S], by `run`'s model (openrun.Run)."""
    from .evaluate import tta_logits, tta_views_of

    if top_k < 1:
        raise UsageError(f"top_k must be at least 1 (got {top_k})", parameters=("top_k",))
    classes, k = run.classes, min(top_k, len(run.classes))
    device = next(run.model.parameters()).device
    results, views = [], tta_views_of(run) if tta else None
    for start in range(0, len(images), batch_size):
        x = run.normalizer(images[start : start + batch_size].to(device))
        logits = tta_logits(run.model, x, views) if tta else run.model(x).float()
        probabilities, index = (logits / run.temperature).softmax(dim=1).topk(k, dim=1)  # calibrated, when fitted
        for p_row, i_row in zip(probabilities.tolist(), index.tolist()):
            results.append([(classes[i], p) for i, p in zip(i_row, p_row)])
    return results


def predict_files(
    run, paths: list[str | Path], top_k: int = 3, tta: bool = False, min_confidence: float | None = None
) -> list[Prediction]:
    """A Prediction for every path given, in order (folders expanded in sorted order): the top classes, or
    why the file could not be read (an error) or was left out (skipped). Below `min_confidence` the
    prediction is 'unknown'."""
    check_min_confidence(min_confidence)
    found = collect_images(paths)
    wanted = [Path(p.image) for p in found if not (p.error or p.skipped)]
    if not wanted and not any(p.error for p in found):
        raise CnnlabError(
            f"no image files found in {', '.join(shown(p) for p in paths)}; give image files or folders "
            f"holding {', '.join(IMAGE_EXTENSIONS)} files"
        )
    images, kept, failed = load_images(wanted, run.image_size)
    tops = predict_images(run, images, top_k, tta) if kept else []
    done = {str(f): Prediction(str(f), top) for f, top in zip(kept, tops)}
    done.update({p.image: p for p in failed})
    return mark_unknown([p if p.error or p.skipped else done[p.image] for p in found], min_confidence)


def predict_any(
    run, images, top_k: int = 3, tta: bool = False, min_confidence: float | None = None
) -> list[Prediction]:
    """run.predict: file paths, PIL images, uint8 arrays or a uint8 tensor [N, 3, H, W], preprocessed as
    `cnnlab predict` preprocesses files (the same resize, the same normalisation). A file that cannot be
    read gets its error in its Prediction; the others are predicted ('unknown' below `min_confidence`)."""
    from PIL import Image

    check_min_confidence(min_confidence)

    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise UsageError(f"a tensor of images must be uint8 [N, 3, H, W], got {images.dtype} {list(images.shape)}")
        images = [im.permute(1, 2, 0).numpy() for im in images]
    elif isinstance(images, (str, Path, Image.Image, np.ndarray)):
        images = [images]
    answers, arrays, slots = [], [], []
    for k, item in enumerate(images):
        name = str(item) if isinstance(item, (str, Path)) else f"image {k}"
        try:
            arrays.append(_picture(item, k, run.image_size))
            slots.append(len(answers))
            answers.append(Prediction(name))
        except CnnlabError as e:
            if isinstance(e, UsageError):
                raise
            answers.append(Prediction(name, error=str(e)))
    if arrays:
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        for slot, top in zip(slots, predict_images(run, batch, top_k, tta)):
            answers[slot].top = top
    return mark_unknown(answers, min_confidence)


def _picture(item, k: int, size: int) -> np.ndarray:
    """One image of any accepted kind as uint8 [size, size, 3], exactly as `cnnlab predict` reads files."""
    from PIL import Image

    from .images import picture_array

    if isinstance(item, (str, Path)):
        arrays, _, failed = load_images([Path(item)], size)
        if failed:
            raise CnnlabError(failed[0].error)
        return arrays[0].permute(1, 2, 0).numpy()
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (3, 4)):
            raise UsageError(f"image {k}: an array must be uint8 [H, W] or [H, W, 3], got {item.dtype} {item.shape}")
        item = Image.fromarray(np.ascontiguousarray(item))
    if not isinstance(item, Image.Image):
        raise UsageError(f"image {k} is a {type(item).__name__}: give file paths, PIL images or uint8 arrays")
    return picture_array(item, size)
