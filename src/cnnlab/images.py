"""Decoding one image file into a uint8 RGB array of a fixed size.

Used by the image-folder reader and by `predict`; the same conversion at training and at
prediction time is what makes a model's answers match between them.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import CnnlabError, brief

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

# Pillow warns above ~89 Mpx and raises above twice that; we refuse anything over its warning
# threshold, since no CIFAR-class model needs a larger picture and a bomb can exhaust memory.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, palette, CMYK become RGB; transparency is composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes | Path, name: str, size: int) -> np.ndarray:
    """Decode `data` (bytes or a path) to a uint8 array [size, size, 3].

    Images of another size are resized (the whole picture, aspect ratio not kept) with
    Pillow's antialiasing filter. Anything unreadable raises CnnlabError naming `name`.
    """
    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else data
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise CnnlabError(
                        f"{name}: {image.width}x{image.height} pixels is over the {MAX_PIXELS:,}-pixel safety limit; "
                        "downscale it first"
                    )
                image.load()
                rgb = to_rgb(image)
                if rgb.size != (size, size):
                    rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
                return np.asarray(rgb, dtype=np.uint8)
    except CnnlabError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise CnnlabError(f"{name}: image is too large to decode safely (decompression-bomb limit); downscale it first") from None
    except UnidentifiedImageError:
        raise CnnlabError(f"{name}: not an image Pillow can read; remove it or convert it to PNG or JPEG") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise CnnlabError(f"{name}: damaged image ({brief(e)}); remove it or replace it") from None
