"""Cheap previews of a generation in progress: the sampler's x0 estimate as an RGB image.

A full VAE decode per step costs about as much as a UNet step, so live previews use a linear
map from the 4 latent channels to RGB (A1111's "Approx cheap", ComfyUI's ``latent_rgb_factors``):
``rgb = latent @ F``, then ``(rgb + 1) / 2`` clamped to [0, 1]. The factors are least-squares
fits of each family's VAE, published by the community; they work on the scaled diffusion
latents the sampler sees. A model without known factors (another latent width) gets ``None``
here and the caller decodes with the VAE instead (``generate.decode_latents``), less often.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor

from genmodels.pipelines.images import image_grid, tensor_to_pil

__all__ = ["LATENT_RGB_FACTORS", "approximate_rgb", "preview_image"]

# rows: latent channels 0-3; columns: R, G, B
_SD = ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350),
       (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177))  # fmt: skip
_SDXL = ((0.3920, 0.4054, 0.4549), (-0.2634, -0.0196, 0.0653),
         (0.0568, 0.1687, -0.0755), (-0.3112, -0.2359, -0.2076))  # fmt: skip
LATENT_RGB_FACTORS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "sd1": _SD, "sd2": _SD, "sdxl-base": _SDXL, "sdxl-refiner": _SDXL,
}  # fmt: skip


def approximate_rgb(latents: Tensor, family: str) -> Tensor | None:
    """(B, 4, h, w) diffusion latents -> (B, 3, h, w) in [0, 1], or None without factors."""
    factors = LATENT_RGB_FACTORS.get(family)
    if factors is None or latents.ndim != 4 or latents.shape[1] != len(factors):
        return None
    f = torch.tensor(factors, dtype=torch.float32)
    rgb = torch.einsum("bchw,cr->brhw", latents.detach().float().cpu(), f)
    return ((rgb + 1) / 2).clamp(0, 1)


def preview_image(pixels: Tensor, size: tuple[int, int] | None = None) -> Image.Image:
    """(B, 3, h, w) in [0, 1] -> one image (a grid for a batch), resized to ``size`` per image
    (width, height) when given."""
    images = tensor_to_pil(pixels)
    if size is not None and images[0].size != size:
        images = [im.resize(size, Image.Resampling.BILINEAR) for im in images]
    return images[0] if len(images) == 1 else image_grid(images)
