"""Reading input images safely and in the right colours.

* Only regular files are opened (a FIFO would block forever, a directory gives a confusing
  error); the file is opened non-blocking and checked with ``fstat``, so there is no race.
* The pixel count is checked from the header before any pixel is decoded, and PIL's
  decompression-bomb warning/error become a ValueError naming the file.
* Every mode becomes 8-bit RGB / L correctly. PIL's own ``convert`` clips 16-bit grey
  ('I;16', 'I') at 255, which turns a 16-bit PNG 99.7% white; here it is scaled (/257).
  Transparency ('RGBA', 'LA', 'P' with a transparent colour) is composited on white for RGB,
  as A1111's ``images.flatten`` with its default background "#ffffff". For a mask ('L'), an
  alpha channel that is not fully opaque is the mask (A1111's ``create_binary_mask``).
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
from PIL import Image

__all__ = ["decode_image", "load_image", "open_regular", "to_8bit"]

_HIGH_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def open_regular(path: str | os.PathLike, what: str = "file") -> BinaryIO:
    """Open ``path`` for reading; ValueError unless it is an existing regular file."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
    except OSError as exc:
        raise ValueError(f"cannot read {what} {name!r}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ValueError(f"cannot read {what} {name!r}: {kind}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def to_8bit(image: Image.Image, mode: str = "RGB") -> Image.Image:
    """``image`` in 8-bit ``mode`` ("RGB" or "L") with the conversions described above."""
    if image.mode in _HIGH_BIT or image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if image.mode != "F" else (1.0 if arr.max(initial=0) <= 1 else 255.0)
        grey = Image.fromarray((arr / scale * 255).clip(0, 255).round().astype(np.uint8), "L")
        return grey.convert(mode)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in _ALPHA:
        image = image.convert("RGBA")
        alpha = image.getchannel("A")
        if mode == "L" and alpha.getextrema() != (255, 255):
            return alpha  # the painted (opaque) region is the mask
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    return image.convert(mode)


@contextmanager
def _pil_errors(name: str) -> Iterator[None]:
    """PIL's errors (and its decompression-bomb warning) as a ValueError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"image {name!r} refused as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, EOFError, ValueError) as exc:
        raise ValueError(f"cannot read image {name!r}: {exc}") from None


def _read(f: BinaryIO, name: str, mode: str, max_pixels: int | None) -> Image.Image:
    with _pil_errors(name):
        im = Image.open(f)  # the header only
    with im:
        w, h = im.size
        if max_pixels is not None and w * h > max_pixels:
            raise ValueError(
                f"image {name!r} is {w}x{h} = {w * h} pixels, more than the limit of "
                f"{max_pixels} (--max-pixels; --no-limits to allow)"
            )
        with _pil_errors(name):
            im.load()
            return to_8bit(im, mode)


def load_image(
    path: str | os.PathLike, mode: str = "RGB", max_pixels: int | None = None
) -> Image.Image:
    """Read an image file fully into 8-bit ``mode`` (ValueError naming the file on any
    problem: missing, not a regular file, unreadable, more than ``max_pixels`` pixels)."""
    with open_regular(path, "image") as f:
        return _read(f, os.fspath(path), mode, max_pixels)


def decode_image(
    data: bytes, mode: str = "RGB", max_pixels: int | None = None, name: str = "image"
) -> Image.Image:
    """``load_image`` for the bytes of an image file (an upload, a base64 field)."""
    return _read(io.BytesIO(data), name, mode, max_pixels)
