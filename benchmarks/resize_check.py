"""Does resizing change the answer? Real test images enlarged by a whole factor, then shrunk back to the
model's size by the old filter (bilinear) and by cnnlab's (area averaging, images.picture_array).

    python benchmarks/resize_check.py RUN [N] [FACTOR]

For the first N test images of the run's data: how many get another class than the original image, and
the largest change of any class probability. Enlarged with each pixel repeated (NEAREST) and smoothly
(BICUBIC, as an image editor or a camera pipeline would).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from PIL import Image

import cnnlab
from cnnlab.images import picture_array


def bilinear_shrink(image: Image.Image, size: int) -> np.ndarray:
    """What cnnlab did before: Pillow's bilinear filter with a reducing gap."""
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0), dtype=np.uint8)


def probabilities(run, arrays: list[np.ndarray]) -> torch.Tensor:
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        return (run.model(run.normalizer(batch)) / run.temperature).softmax(1)


def main() -> None:
    run = cnnlab.load_run(sys.argv[1])
    n, factor = (int(sys.argv[2]) if len(sys.argv) > 2 else 200), (int(sys.argv[3]) if len(sys.argv) > 3 else 8)
    data = run.dataset()
    originals = [data.test_images[k].permute(1, 2, 0).numpy() for k in range(n)]
    reference = probabilities(run, originals)
    size = run.image_size
    print(f"{run!r}; first {n} test images, enlarged {factor}x")
    for enlarge in ("NEAREST", "BICUBIC"):
        big = [Image.fromarray(a).resize((size * factor,) * 2, getattr(Image.Resampling, enlarge)) for a in originals]
        for name, shrink in (("bilinear (before)", bilinear_shrink), ("area (cnnlab)", picture_array)):
            p = probabilities(run, [shrink(b, size) for b in big])
            moved = int((p.argmax(1) != reference.argmax(1)).sum())
            print(
                f"  enlarged {enlarge:<7} shrunk {name:<18} class changed for {moved:3d} of {n}, "
                f"largest probability change {float((p - reference).abs().max()):.3f}"
            )


if __name__ == "__main__":
    main()
