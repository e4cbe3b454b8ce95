"""Decoding one image file into a uint8 RGB array of a fixed size.

Used by the image-folder reader and by `predict`; the same conversion at training and at
prediction time is what makes a model's answers match between them.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import CnnlabError, brief
from .sourcefiles import regular_file

# The one list of what an image file is, for training folders and `predict` alike (README: "Image files").
# Pillow reads every one of them; an animated GIF, WebP or PNG is read as its first frame.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")

# Pillow warns above ~89 Mpx and raises above twice that; we refuse anything over its warning
# threshold, since no CIFAR-class model needs a larger picture and a bomb can exhaust memory.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, palette, CMYK, 16-bit and float images become 8-bit RGB; transparency is composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(_to_8bit(image), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_8bit(image: Image.Image) -> np.ndarray:
    """A single-channel image of more than 8 bits, scaled (not clipped) to 0-255.

    Integers by the bit depth the file declares (16-bit PNG and TIFF: / 257); floats are taken as
    0-1 when every pixel is at most 1 (the usual convention for float images), else as 0-255."""
    values = np.asarray(image)
    if image.mode == "F":
        if not np.isfinite(values).all():
            raise ValueError("it has pixel values that are not finite numbers")
        top = 1.0 if values.size and float(values.max()) <= 1.0 else 255.0
    else:
        top = float(2 ** _bit_depth(image) - 1)
    return np.clip(np.rint(values.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def _bit_depth(image: Image.Image) -> int:
    if image.mode.startswith("I;16"):
        return 16
    tags = getattr(image, "tag_v2", None)  # TIFF: BitsPerSample
    declared = tags.get(258) if tags is not None else None
    if declared:
        return int(declared[0] if isinstance(declared, tuple) else declared)
    return 16 if image.format == "PNG" else 31  # mode "I" holds signed 32-bit integers


def picture_array(image: Image.Image, size: int) -> np.ndarray:
    """A decoded picture as the model sees it: RGB, resized to size x size, uint8 [size, size, 3].

    Shrinking averages the source pixels each output pixel covers (Pillow's BOX filter, area-correct), so a
    picture enlarged by a whole factor and shrunk back is the original again: bilinear filtering is not,
    and the model's answer moved with it. Enlarging interpolates bilinearly."""
    rgb = to_rgb(image)
    if rgb.size != (size, size):
        shrinking = rgb.width >= size and rgb.height >= size
        rgb = rgb.resize((size, size), Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def decode_image(data: bytes | Path, name: str, size: int) -> np.ndarray:
    """Decode `data` (bytes or a path) to a uint8 array [size, size, 3].

    The EXIF orientation is applied (a phone's portrait photo stands upright) and an animated image
    gives its first frame. Images of another size are resized (the whole picture, aspect ratio not
    kept): area averaging to shrink, bilinear to enlarge (picture_array). Anything unreadable raises
    CnnlabError naming `name`.
    """
    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else regular_file(data, name)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise CnnlabError(
                        f"{name}: {image.width}x{image.height} pixels is over the {MAX_PIXELS:,}-pixel safety limit; "
                        "downscale it first"
                    )
                image.seek(0)
                image.load()
                return picture_array(ImageOps.exif_transpose(image), size)
    except CnnlabError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise CnnlabError(
            f"{name}: image is too large to decode safely (decompression-bomb limit); downscale it first"
        ) from None
    except UnidentifiedImageError:
        raise CnnlabError(f"{name}: not an image Pillow can read; remove it or convert it to PNG or JPEG") from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, struct.error, zlib.error, MemoryError) as e:
        raise CnnlabError(f"{name}: damaged image ({brief(e)}); remove it or replace it") from None


def all_grey(images) -> bool:
    """Whether every image of a uint8 tensor [N, 3, H, W] is grey: its three channels equal everywhere."""
    return bool((images[:, 0] == images[:, 1]).all() and (images[:, 1] == images[:, 2]).all())
