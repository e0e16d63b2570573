"""Per-image similarity to a reference image: SSIM (Wang et al. 2004) and PSNR, for images in
[0, 1]. Used to compare an accelerated sampling run with the exact one of the same seed."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr_per_image", "ssim_per_image"]


def _gaussian_window(size: int, sigma: float, channels: int) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size)


def ssim_per_image(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM of each image pair (B, C, H, W) in [0, 1] -> (B,), with the paper's Gaussian
    window (11, sigma 1.5; for images under 11 pixels the largest odd size that fits, sigma
    scaled with it) and constants
    C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 1, over valid windows only (no padding)."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"expected two (B, C, H, W) tensors of one shape, got {x.shape}, {y.shape}"
        )
    size = min(window, *x.shape[-2:])
    size -= 1 - size % 2  # odd
    sigma = sigma * size / window
    # float64: E[x^2] - E[x]^2 of a float32 blur loses ~1e-6, which C2 = 9e-4 does not hide
    w = _gaussian_window(size, sigma, x.shape[1]).to(x.device, torch.float64)
    x, y = x.double(), y.double()

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, w, groups=x.shape[1])

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    structure = (2 * cov + c2) / (var_x + var_y + c2)
    return (luminance * structure).flatten(1).mean(1).float()


def psnr_per_image(x: Tensor, y: Tensor) -> Tensor:
    """PSNR (dB) of each image pair (B, C, H, W) in [0, 1] -> (B,); identical images give inf."""
    mse = (x.float() - y.float()).square().flatten(1).mean(1)
    return torch.where(mse > 0, -10 * torch.log10(mse.clamp_min(1e-30)), math.inf)
