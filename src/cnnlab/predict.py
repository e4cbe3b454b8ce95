"""Point a trained model at any image files: decoded, resized and normalised exactly as in training
(images.decode_image, the checkpoint's mean and std), then the top-k classes with probabilities.

A file that cannot be read gets its own error and is skipped; the rest of the batch goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import CnnlabError, UsageError
from .images import IMAGE_EXTENSIONS, decode_image


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]] | None = None  # (class, probability), most likely first
    error: str | None = None

    def to_dict(self) -> dict:
        if self.error:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "predicted": self.top[0][0],
                "top": [{"class": c, "probability": p} for c, p in self.top]}


def collect_images(paths: list[str | Path]) -> list[Path]:
    """Files as given (any extension: Pillow decides), folders searched recursively for image files."""
    found = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        else:
            found.append(path)  # a missing file is reported in its turn, with the others
    return found


def load_images(files: list[Path], image_size: int) -> tuple[torch.Tensor, list[Path], list[Prediction]]:
    """uint8 [N, 3, S, S] of the readable files, the files it holds, and an error per unreadable one."""
    arrays, kept, failed = [], [], []
    for file in files:
        try:
            if not file.is_file():
                raise CnnlabError(f"{file}: no such file")
            if file.stat().st_size == 0:
                raise CnnlabError(f"{file}: empty file (0 bytes); remove it or replace it")
            arrays.append(decode_image(file, str(file), image_size))
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
    """Predictions for every file, in the order given (folders expanded in sorted order)."""
    files = collect_images(paths)
    if not files:
        raise CnnlabError(f"no image files found in {', '.join(map(str, paths))}; give image files or folders holding "
                          f"{', '.join(IMAGE_EXTENSIONS)} files")
    images, kept, failed = load_images(files, checkpoint["image_size"])
    tops = predict_images(model, images, checkpoint, top_k, tta, device=device) if kept else []
    by_file = {str(f): Prediction(str(f), top) for f, top in zip(kept, tops)}
    by_file.update({p.image: p for p in failed})
    return [by_file[str(f)] for f in files]
