"""Up-front bounds on one generation: steps, pixels per image, and an estimate of the memory.

A 99968x99968 request used to allocate until the kernel killed the process (23 GB in). These
checks run before a model is loaded (with SD-sized defaults for the model) and again in the
library with the loaded model's sizes, and refuse with a message naming the number and the
limit. ``NO_LIMITS`` (``--no-limits``) turns them off.

The memory estimate is a lower bound of the peak, per image: the float pixel buffers, the
VAE decoder's full-resolution activations (a tile's worth when the VAE decodes in tiles), the
UNet's first-level activations for the CFG pair, and the sampler's copies of the latent. It is
compared with the device's memory: physical RAM (``SC_PHYS_PAGES * SC_PAGE_SIZE``, or a smaller
cgroup limit) on the CPU, the card's memory on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

__all__ = [
    "GenerationLimits", "ModelSize", "NO_LIMITS", "check_generation", "check_pixels",
    "device_memory", "estimate_memory",
]  # fmt: skip

MAX_STEPS = 10_000
MAX_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class GenerationLimits:
    """``None`` switches a bound off; ``max_memory="auto"``: the device's memory."""

    max_steps: int | None = MAX_STEPS
    max_pixels: int | None = MAX_PIXELS  # width x height of one image (and of an init image)
    max_memory: int | None | Literal["auto"] = "auto"  # bytes


NO_LIMITS = GenerationLimits(max_steps=None, max_pixels=None, max_memory=None)


@dataclass(frozen=True)
class ModelSize:
    """The sizes of a model that the memory estimate needs (defaults: SD 1.x/2.x/XL)."""

    latent_channels: int = 4
    vae_factor: int = 8
    vae_channels: int = 128  # decoder width at full resolution (ch * ch_mult[0])
    unet_channels: int = 320  # UNet width at latent resolution
    tile_size: int | None = None  # the VAE decodes in tiles of this many pixels (None: whole)


def device_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes of memory of ``device`` (physical RAM, or a smaller cgroup limit), None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    try:  # a container's limit (cgroup v2); "max" when there is none
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text.isdigit():
            ram = min(ram, int(text))
    except OSError:
        pass
    return ram


def estimate_memory(
    width: int, height: int, batch_size: int, model: ModelSize, dtype: torch.dtype
) -> int:
    """A lower bound of the peak memory, in bytes, of generating ``batch_size`` images."""
    act = torch.empty((), dtype=dtype).element_size()
    pixels = width * height
    latent = pixels // model.vae_factor**2
    decode_area = pixels if model.tile_size is None else min(pixels, model.tile_size**2)
    per_image = (
        pixels * 3 * 4 * 4  # decoded float32 pixels, [0, 1] copy, clamp, uint8 / PIL
        + decode_area * model.vae_channels * act * 3  # decoder activations at full resolution
        + latent * model.unet_channels * act * 2 * 4  # UNet first level, cond + uncond
        + latent * model.latent_channels * 4 * 10  # sampler state (x, denoised, d, history)
    )
    return per_image * batch_size


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_pixels(width: int, height: int, limits: GenerationLimits, what: str = "image") -> None:
    if limits.max_pixels is not None and width * height > limits.max_pixels:
        raise ValueError(
            f"{what} size {width}x{height} = {width * height} pixels is more than the limit of "
            f"{limits.max_pixels} pixels (--max-pixels; --no-limits to allow)"
        )


def check_generation(
    width: int,
    height: int,
    batch_size: int,
    steps: int,
    limits: GenerationLimits,
    model: ModelSize | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> None:
    """ValueError when the request is over ``limits`` (steps, pixels, estimated memory)."""
    if limits.max_steps is not None and steps > limits.max_steps:
        raise ValueError(
            f"steps {steps} is more than the limit of {limits.max_steps} (--no-limits to allow)"
        )
    check_pixels(width, height, limits)
    memory = device_memory(device) if limits.max_memory == "auto" else limits.max_memory
    if memory is None:
        return
    need = estimate_memory(width, height, batch_size, model or ModelSize(), dtype)
    if need > memory:
        raise ValueError(
            f"{width}x{height} x batch {batch_size} needs about {_gib(need)} of memory, more "
            f"than the {_gib(memory)} of {torch.device(device).type} memory; use a smaller size "
            "or batch (or --no-limits)"
        )
