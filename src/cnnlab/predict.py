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


@dataclass
class Prediction:
    image: str                                  # the path as given or found (any bytes the OS allows)
    top: list[tuple[str, float]] | None = None  # (class, probability), most likely first
    error: str | None = None                    # why it could not be read: a failure
    skipped: str | None = None                  # why a file found in a folder is not an image: not a failure

    def to_dict(self) -> dict:
        image = portable(self.image)
        if self.error or self.skipped:
            return {"image": image, **({"error": self.error} if self.error else {"skipped": self.skipped})}
        return {"image": image, "predicted": self.top[0][0],
                "top": [{"class": c, "probability": p} for c, p in self.top]}


URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def collect_images(paths: list[str | Path]) -> list[Prediction]:
    """Every path given, in order, as a Prediction still to be made: files as given (any extension: Pillow
    decides), folders searched recursively for image files, hidden ones left out. What cannot be an image
    is answered here: a URL (not fetched), a missing path, or a folder's file that is not an image (skipped)."""
    found = []
    for raw in paths:
        path = Path(raw)
        if URL.match(str(raw)):
            found.append(Prediction(str(raw), error=f"{shown(raw)}: URLs are not fetched; download the image first "
                                                    "(for example with curl -O) and pass the file"))
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
                found.append(Prediction(file, skipped=f"not an image file (cnnlab reads {', '.join(IMAGE_EXTENSIONS)})"))
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
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous() if arrays else \
        torch.zeros(0, 3, image_size, image_size, dtype=torch.uint8)
    return images, kept, failed


@torch.no_grad()
def predict_images(model: torch.nn.Module, images: torch.Tensor, checkpoint: dict, top_k: int = 3,
                   tta: bool = False, batch_size: int = 256, device="cpu") -> list[list[tuple[str, float]]]:
    from .evaluate import tta_logits
    from .loader import Normalizer

    classes = checkpoint["classes"]
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1 (got {top_k})")
    k = min(top_k, len(classes))
    normalize = Normalizer(tuple(checkpoint["mean"]), tuple(checkpoint["std"]))
    model = model.eval().to(device)
    results = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device))
        logits = tta_logits(model, x) if tta else model(x).float()
        probabilities, index = logits.softmax(dim=1).topk(k, dim=1)
        for p_row, i_row in zip(probabilities.tolist(), index.tolist()):
            results.append([(classes[i], p) for i, p in zip(i_row, p_row)])
    return results


def predict_files(model: torch.nn.Module, checkpoint: dict, paths: list[str | Path], top_k: int = 3,
                  tta: bool = False, device="cpu") -> list[Prediction]:
    """A Prediction for every path given, in order (folders expanded in sorted order): the top classes, or
    why the file could not be read (an error) or was left out (skipped)."""
    found = collect_images(paths)
    wanted = [Path(p.image) for p in found if not (p.error or p.skipped)]
    if not wanted and not any(p.error for p in found):
        raise CnnlabError(f"no image files found in {', '.join(shown(p) for p in paths)}; give image files or folders "
                          f"holding {', '.join(IMAGE_EXTENSIONS)} files")
    images, kept, failed = load_images(wanted, checkpoint["image_size"])
    tops = predict_images(model, images, checkpoint, top_k, tta, device=device) if kept else []
    done = {str(f): Prediction(str(f), top) for f, top in zip(kept, tops)}
    done.update({p.image: p for p in failed})
    return [p if p.error or p.skipped else done[p.image] for p in found]
