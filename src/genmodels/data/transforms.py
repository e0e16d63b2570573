"""Image transforms: resize (shorter side), centre / random crop, horizontal flip, to tensor."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["load_rgb", "to_tensor", "transform_image"]


def load_rgb(path: str) -> Image.Image:
    """Open an image as RGB; transparent pixels are composited onto white."""
    with Image.open(path) as img:
        img.load()
        if img.mode in ("RGBA", "LA", "P"):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, img).convert("RGB")
        return img.convert("RGB")


def to_tensor(img: Image.Image) -> Tensor:
    """PIL RGB -> float32 (3, H, W) in [-1, 1]."""
    arr = np.asarray(img, dtype=np.float32)  # (H, W, 3)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1


def transform_image(
    img: Image.Image, size: int, crop: str = "center", flip: bool = False, seed: int = 0
) -> Tensor:
    """Resize the shorter side to ``size`` (bicubic), crop ``size`` x ``size`` (centre or random),
    flip horizontally with probability 1/2 if ``flip``; randomness from ``seed``."""
    if crop not in ("center", "random"):
        raise ValueError(f"unknown crop {crop!r}; valid: center, random")
    rng = random.Random(seed)
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    if crop == "center":
        left, top = (nw - size) // 2, (nh - size) // 2
    else:
        left, top = rng.randint(0, nw - size), rng.randint(0, nh - size)
    img = img.crop((left, top, left + size, top + size))
    if flip and rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return to_tensor(img)
