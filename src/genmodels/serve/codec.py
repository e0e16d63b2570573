"""Images in JSON: base64 PNG out (with the ``parameters`` chunk), base64 or data-URL in.

A1111 accepts an image as plain base64 or as a data URL (``data:image/png;base64,...``, what
webuiapi sends) and returns plain base64. Decoding is strict: bad base64 or an unreadable image
is a ``ValueError`` naming the field (a 400), and the pixel count is checked from the image
header before any pixel is decoded (``pipelines.image_reading.decode_image``).
"""

from __future__ import annotations

import base64
import binascii
import re

from PIL import Image

from genmodels.pipelines.image_reading import decode_image
from genmodels.pipelines.images import encode_png

__all__ = ["b64_png", "decode_b64", "decode_b64_image"]

_DATA_URL = re.compile(r"^data:[\w/+.-]*(?:;[\w=.-]+)*;base64,")
_BLANKS = re.compile(r"\s+")


def b64_png(image: Image.Image, parameters: str | None = None) -> str:
    """Plain base64 of ``image`` as a PNG with an optional ``parameters`` text chunk."""
    return base64.b64encode(encode_png(image, parameters)).decode("ascii")


def decode_b64(text: object, field: str) -> bytes:
    """The bytes of a base64 string or data URL (ValueError naming ``field``)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"{field}: expected a base64 image string, got {type(text).__name__}")
    body = _BLANKS.sub("", _DATA_URL.sub("", text, count=1))
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{field}: malformed base64 ({exc})") from None
    if not data:
        raise ValueError(f"{field}: the image is empty")
    return data


def decode_b64_image(
    text: object, field: str, mode: str = "RGB", max_pixels: int | None = None
) -> Image.Image:
    """A base64 / data-URL image as an 8-bit ``mode`` PIL image (ValueError naming the field)."""
    return decode_image(decode_b64(text, field), mode, max_pixels, field)
