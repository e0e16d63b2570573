"""Image helpers for generation: tensor <-> PIL, masks, grids, atomic PNG writes (reading input
images: ``image_reading``)."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from torch import Tensor

from genmodels.checkpoints.atomic import write_atomic
from genmodels.pipelines.image_reading import load_image

__all__ = [
    "encode_png", "image_grid", "load_image", "pil_to_tensor", "save_png", "tensor_to_pil",
]  # fmt: skip


def pil_to_tensor(image: Image.Image, mode: str = "RGB") -> Tensor:
    """PIL image -> (C, H, W) float32 in [0, 1] (C = 3 for RGB, 1 for L)."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image, got {type(image).__name__}")
    arr = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def tensor_to_pil(images: Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> RGB PIL images (rounded to uint8)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a) for a in arr]


def image_grid(images: Sequence[Image.Image], cols: int | None = None) -> Image.Image:
    """Images of one size in rows of ``cols`` (default: about square), left to right."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    w, h = images[0].size
    if any(im.size != (w, h) for im in images):
        raise ValueError("image_grid: all images must have the same size")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


def _png_info(parameters: str | None) -> PngImagePlugin.PngInfo | None:
    """The A1111 ``parameters`` text chunk (None: no chunk)."""
    if parameters is None:
        return None
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    return info


def save_png(image: Image.Image, path: str | os.PathLike, parameters: str | None = None) -> Path:
    """Write a PNG atomically (temporary file in the same folder, then rename), with an
    optional A1111 ``parameters`` text chunk."""
    path = Path(path)
    info = _png_info(parameters)
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))
    return path


def encode_png(image: Image.Image, parameters: str | None = None) -> bytes:
    """The bytes of ``image`` as a PNG file, with an optional ``parameters`` text chunk."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=_png_info(parameters))
    return buffer.getvalue()
