"""PNG and JPEG pictures as the network's input: one grayscale uint8 row per picture.

A person's picture is made like the training images: grayscale, padded to a square with its
own background and resized to the model's side, light strokes on a dark background (MNIST's
convention: a picture with a light background is inverted), pixels 0..255 that predict scales
to [0, 1] like every training row.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dtrain.service.errors import DtrainError

# Magic numbers: how a picture is told from .npy, .npz and IDX whatever its file name.
SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}
# A picture past this many pixels is refused before it is decoded (a "decompression bomb").
MAX_PIXELS = 50_000_000
# The square a picture is padded to is held whole, so its side is bounded too: a 1,000,000 x 1
# PNG (a few hundred bytes, 1 M pixels) would pad to 10**12 bytes. 16384 keeps every photo.
MAX_SQUARE_SIDE = 16384


def picture_format(path: Path) -> str | None:
    """ "PNG" or "JPEG" when the file starts like one, else None."""
    with path.open("rb") as f:
        head = f.read(8)
    return next((name for sig, name in SIGNATURES.items() if head.startswith(sig)), None)


def image_side(input_size: int) -> int:
    """The square side a model of ``input_size`` inputs reads (784 -> 28)."""
    side = math.isqrt(input_size)
    if side * side != input_size:
        raise DtrainError(
            f"the checkpoint takes {input_size} inputs, not a square image: pictures cannot be "
            "converted for it (give arrays of its input size)"
        )
    return side


def load_picture(path: Path, input_size: int, invert: bool | None = None) -> np.ndarray:
    """One picture as uint8 (1, input_size). ``invert``: None decides by the background."""
    side = image_side(input_size)
    try:
        with warnings.catch_warnings():
            # Pillow warns (then errors at twice the size) on huge pictures; refuse either way.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=["PNG", "JPEG"]) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise DtrainError(
                        f"{path}: picture is {img.width}x{img.height}, more than "
                        f"{MAX_PIXELS:,} pixels"
                    )
                if max(img.width, img.height) > MAX_SQUARE_SIDE:
                    raise DtrainError(
                        f"{path}: picture is {img.width}x{img.height}, a side longer than "
                        f"{MAX_SQUARE_SIDE} pixels (it is padded to a square of that side)"
                    )
                gray = _grayscale(img)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise DtrainError(f"{path}: picture too large ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        # Pillow reports truncated or corrupt files as OSError, SyntaxError or ValueError.
        raise DtrainError(f"{path}: unreadable picture ({e})") from None
    pixels = np.asarray(_square(gray).resize((side, side), _resample(gray, side)), np.uint8)
    if invert is None:
        invert = _light_background(pixels)
    if invert:
        pixels = 255 - pixels
    return pixels.reshape(1, input_size)


def _grayscale(img: Image.Image) -> Image.Image:
    img.load()
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels are the paper the digit is drawn on: white, not their hidden color.
        rgba = img.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(paper, rgba)
    return img.convert("L")


def _square(gray: Image.Image) -> Image.Image:
    """Pad the shorter side with the border's color, so resizing keeps the shape's proportions."""
    w, h = gray.size
    if w == h:
        return gray
    side = max(w, h)
    border = int(np.median(_border(np.asarray(gray))))
    out = Image.new("L", (side, side), border)
    out.paste(gray, ((side - w) // 2, (side - h) // 2))
    return out


def _resample(gray: Image.Image, side: int) -> Image.Resampling:
    # BOX averages the pixels each output pixel covers (shrinking an upscaled image by an
    # integer factor gives it back exactly); enlarging a small picture interpolates.
    shrinking = max(gray.size) >= side
    return Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR


def _border(pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])


def _light_background(pixels: np.ndarray) -> bool:
    """Dark ink on light paper (a scan, a drawing program's default) needs inverting."""
    return bool(np.median(_border(pixels)) > 127)
