"""Hires fix (A1111 txt2img ``enable_hr``): the settings and the upscale between the two passes.

The first pass generates at the base size; its latents are upscaled to the target size, either
in latent space with a named interpolation (A1111's latent upscalers) or in pixel space (decode,
PIL resize, encode); a second, img2img pass at the target size denoises them with its own steps,
sampler and strength. As A1111 (``setup_img2img_steps`` with explicit steps), the second pass
runs exactly ``steps`` steps: the last ``steps`` of a schedule of ``int(steps / min(strength,
0.999))`` steps, starting from the upscaled latents plus fresh noise of the image's seed.

The target size is ``int(base * scale)`` per side, or ``resize`` = (width, height) (A1111's
"Resize width to / height to"; 0 keeps the aspect ratio; with both given the image is upscaled
to cover them and the latents are cropped to the centre, as A1111's ``truncate_x/y``). The
latents get ``size // 8`` pixels per side (A1111 floors to whole latent pixels as well).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from genmodels.pipelines.images import pil_to_tensor, tensor_to_pil

__all__ = [
    "LATENT_UPSCALERS", "PIXEL_UPSCALERS", "HiresFix", "crop_latents", "hires_sigmas",
    "upscale_latents",
]  # fmt: skip

# A1111 ``shared.latent_upscale_modes``: name -> (F.interpolate mode, antialias)
LATENT_UPSCALERS: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
PIXEL_UPSCALERS: dict[str, Image.Resampling] = {
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}
UPSCALERS = (*LATENT_UPSCALERS, *PIXEL_UPSCALERS)


@dataclass(frozen=True)
class HiresFix:
    """Second-pass settings (infotext: ``Hires upscale`` / ``Hires resize``, ``Hires steps``,
    ``Hires upscaler``, ``Denoising strength``, ``Hires sampler``, ``Hires schedule type``,
    ``Hires prompt``, ``Hires negative prompt``)."""

    scale: float = 2.0
    resize: tuple[int, int] | None = None  # (width, height), 0: keep the aspect; overrides scale
    upscaler: str = "Latent"
    steps: int = 0  # 0: as many as the first pass
    denoising_strength: float = 0.7
    sampler: str | None = None  # None: the first pass's
    scheduler: str | None = None  # None: the first pass's (or the hires sampler's own)
    prompt: str | None = None  # None: the first pass's
    negative_prompt: str | None = None  # None: the first pass's

    def __post_init__(self) -> None:
        s = self.scale
        if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s) or s <= 0:
            raise ValueError(f"hires scale must be a positive number, got {s!r}")
        if self.upscaler not in UPSCALERS:
            raise ValueError(f"unknown hires upscaler {self.upscaler!r}; valid: {list(UPSCALERS)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"hires steps must be an integer >= 0, got {self.steps!r}")
        d = self.denoising_strength
        if isinstance(d, bool) or not isinstance(d, int | float) or not 0 < d <= 1:
            raise ValueError(f"hires denoising strength must be in (0, 1], got {d!r}")
        for name in ("prompt", "negative_prompt"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"hires {name} must be a str, got {type(value).__name__}")
        r = self.resize
        if r is not None:
            ok = len(r) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in r)
            if not ok or min(r) < 0 or max(r) == 0:
                raise ValueError(f"hires resize must be (width, height) >= 0, not both 0: {r!r}")

    def plan(
        self, width: int, height: int, factor: int = 8
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        """((width, height) to upscale to, (x, y) latent pixels to crop) for a first pass of
        ``width`` x ``height`` and a VAE ``factor`` (A1111 ``StableDiffusionProcessingTxt2Img
        .init``)."""
        crop = (0, 0)
        if self.resize is None:
            up = (int(width * self.scale), int(height * self.scale))
        else:
            rx, ry = self.resize
            if ry == 0 or (rx and width / height < rx / ry):
                up = (rx, rx * height // width)
            else:
                up = (ry * width // height, ry)
            if rx and ry:
                crop = ((up[0] - rx) // factor, (up[1] - ry) // factor)
        if up[0] // factor - crop[0] < 1 or up[1] // factor - crop[1] < 1:
            raise ValueError(f"the hires fix makes {width}x{height} smaller than 8 pixels")
        return up, crop

    def target_size(self, width: int, height: int, factor: int = 8) -> tuple[int, int]:
        """(width, height) of the second pass (whole latent pixels)."""
        (w, h), (cx, cy) = self.plan(width, height, factor)
        return (w // factor - cx) * factor, (h // factor - cy) * factor


def hires_sigmas(full: Callable[[int], Tensor], steps: int, strength: float) -> Tensor:
    """A1111 ``setup_img2img_steps`` with explicit ``steps``: the schedule of
    ``int(steps / min(strength, 0.999))`` steps from ``full(n)``, without its first
    ``n - steps`` steps (``steps + 1`` sigmas, ending with 0)."""
    n = int(steps / min(strength, 0.999))
    t_enc = steps - 1
    return full(n)[n - t_enc - 1 :]


def upscale_latents(
    latents: Tensor, width: int, height: int, upscaler: str, factor: int,
    decode: Callable[[Tensor], Tensor], encode: Callable[[Tensor], Tensor],
) -> Tensor:  # fmt: skip
    """Latents (B, C, h, w) -> (B, C, height / factor, width / factor) with ``upscaler``;
    pixel upscalers go through ``decode`` (latents -> [0, 1] pixels) and ``encode``."""
    size = (height // factor, width // factor)
    if upscaler in LATENT_UPSCALERS:
        mode, antialias = LATENT_UPSCALERS[upscaler]
        return F.interpolate(latents, size=size, mode=mode, antialias=antialias)
    resample = PIXEL_UPSCALERS[upscaler]
    images = tensor_to_pil(decode(latents))
    resized = [im.resize((width, height), resample=resample) for im in images]
    pixels = torch.stack([pil_to_tensor(im, "RGB") for im in resized])
    return encode(pixels)


def crop_latents(latents: Tensor, crop: tuple[int, int]) -> Tensor:
    """Drop ``crop`` = (x, y) latent pixels, half (rounded down) before, the rest after
    (A1111's ``truncate_x`` / ``truncate_y``)."""
    cx, cy = crop
    h, w = latents.shape[-2:]
    return latents[..., cy // 2 : h - (cy + 1) // 2, cx // 2 : w - (cx + 1) // 2]
