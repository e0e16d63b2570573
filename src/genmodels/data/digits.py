"""Built-in offline dataset: scikit-learn's handwritten digits (UCI optdigits test set).

1797 grey-scale 8x8 images with values 0..16 and labels 0..9, bundled with scikit-learn (no
download). We scale them to [-1, 1] and upscale them (bilinear, ``antialias``) to ``size``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DIGITS_MAX", "load_digits_arrays", "load_digits_tensor"]

DIGITS_MAX = 16.0  # pixel values of sklearn's digits run 0..16


def load_digits_arrays() -> tuple[Tensor, Tensor]:
    """The raw digits: images (1797, 8, 8) float32 in 0..16 and labels (1797,) int64."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the built-in 'digits' dataset needs scikit-learn: pip install scikit-learn"
        ) from exc
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return images, labels


def load_digits_tensor(size: int = 16) -> tuple[Tensor, Tensor]:
    """Digits as (N, 1, size, size) float32 in [-1, 1] and labels (N,) int64."""
    if size < 8:
        raise ValueError(f"digits size must be >= 8 (the native size), got {size}")
    images, labels = load_digits_arrays()
    x = images[:, None] / DIGITS_MAX * 2 - 1  # (N, 1, 8, 8)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(-1, 1).contiguous(), labels


def to_native(x: Tensor) -> Tensor:
    """Generated images (N, 1, H, W) in [-1, 1] back to sklearn's 8x8, 0..16 layout (N, 64)."""
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected images of shape (N, 1, H, W), got {tuple(x.shape)}")
    x = x.float().clamp(-1, 1)
    if x.shape[-1] != 8 or x.shape[-2] != 8:
        x = F.interpolate(x, size=(8, 8), mode="area")
    return ((x + 1) / 2 * DIGITS_MAX).flatten(1)
