"""Image metrics of training runs."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["dataset_psnr", "psnr"]


def psnr(x: Tensor, y: Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = max(float((x.float() - y.float()).square().mean()), 1e-12)
    return 10 * math.log10(4.0 / mse)


@torch.no_grad()
def dataset_psnr(
    reconstruct: Callable[[Tensor], Tensor], images: Tensor, batch_size: int = 256
) -> float:
    """PSNR (dB) of ``reconstruct(x)`` (clamped to [-1, 1]) over all ``images``, batch by batch."""
    se = 0.0
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size]
        se += float((reconstruct(x).clamp(-1, 1).float().cpu() - x.float()).square().sum())
    return 10 * math.log10(4.0 / max(se / images.numel(), 1e-12))
