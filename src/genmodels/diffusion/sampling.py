"""One call from a denoiser to samples: name -> sampler, name -> sigmas, seeded noise.

    x0 = sample(denoiser, (4, 4, 64, 64), sampler="DPM++ 2M Karras", steps=20, seeds=42)

Samplers stay stateless functions; this module only wires up what a UI would: the schedule
from a scheduler name (or the scheduler an A1111 name implies), the initial noise and the
per-step noise from per-sample CPU generators (seed, seed+1, ...), so a batch of N equals N
single runs with the same seeds on any device.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .noise import BrownianTreeNoiseSampler, SeededNoiseSampler
from .samplers.registry import SAMPLER_INFO, resolve_sampler
from .schedules import SigmaModel, compute_sigmas

__all__ = ["sample", "sampler_sigmas"]


def sampler_sigmas(
    model: SigmaModel, sampler: str, scheduler: str | None, steps: int
) -> tuple[str, Tensor]:
    """(canonical sampler name, sigmas) for a sampler/scheduler pair as ComfyUI builds them."""
    name, implied = resolve_sampler(sampler)
    scheduler = scheduler or implied or "normal"
    if SAMPLER_INFO[name].discard_penultimate_sigma:
        sigmas = compute_sigmas(scheduler, model, steps + 1)
        return name, torch.cat([sigmas[:-2], sigmas[-1:]])
    return name, compute_sigmas(scheduler, model, steps)


def _accepts(fn: Callable, option: str) -> bool:
    return option in inspect.signature(fn).parameters


@torch.no_grad()
def sample(
    denoiser: Callable[..., Tensor],
    shape: Sequence[int],
    *,
    sampler: str = "euler",
    scheduler: str | None = None,
    steps: int = 20,
    sigmas: Tensor | None = None,
    seeds: int | Sequence[int] = 0,
    init: Tensor | None = None,
    extra_args: dict[str, Any] | None = None,
    callback: Callable[[dict], None] | None = None,
    disable: bool | None = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    noise: SeededNoiseSampler | None = None,
    x_start: Tensor | None = None,
    noise_transform: Callable[[Tensor], Tensor] | None = None,
    **options: Any,
) -> Tensor:
    """Sample from ``denoiser`` starting at noise of ``shape`` (B, ...).

    ``sigmas`` overrides ``scheduler``/``steps``. ``init`` (same shape) is added to the scaled
    noise, which is how img2img starts from a partially noised image when ``sigmas[0]`` is
    below the model's sigma_max. Sampler options (eta, s_noise, s_churn, order, ...) pass
    through ``options``.

    Continuing a run (an SDXL refiner taking over at a switch step): pass the first run's
    ``noise`` sampler, so the generators go on where they stopped, and ``x_start``, the latents
    at ``sigmas[0]``, used as they are. ``noise_transform`` maps the initial unit noise before
    it is scaled (A1111's variation seeds).
    """
    name, _ = resolve_sampler(sampler)
    info = SAMPLER_INFO[name]
    if sigmas is None:
        name, sigmas = sampler_sigmas(denoiser, sampler, scheduler, steps)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32, device=device)
    shape = tuple(shape)
    if init is not None and tuple(init.shape) != shape:
        raise ValueError(f"init has shape {tuple(init.shape)}, expected {shape}")

    # one CPU generator per sample: its first draw is the initial noise, later draws the
    # sampler's step noise (as A1111 continues its per-image generators)
    if noise is None:
        noise = SeededNoiseSampler(torch.empty(shape, device=device, dtype=dtype), seeds)
    if x_start is not None:
        if tuple(x_start.shape) != shape:
            raise ValueError(f"x_start has shape {tuple(x_start.shape)}, expected {shape}")
        x = x_start.to(device=device, dtype=dtype)
    else:
        first = noise()
        scale = sigmas[0]
        if info.vp_start and init is None:  # A1111's timestep samplers: unit VP noise
            scale = (1 + sigmas[0] ** 2).sqrt()
        x = (noise_transform(first) if noise_transform is not None else first) * scale
        if init is not None:
            x = x + init.to(device=device, dtype=dtype)

    if _accepts(info.fn, "noise_sampler") and "noise_sampler" not in options:
        if info.brownian_noise:
            positive = sigmas[sigmas > 0]
            options["noise_sampler"] = BrownianTreeNoiseSampler(
                x, positive.min(), positive.max(), seed=noise.seeds
            )
        else:
            options["noise_sampler"] = noise
    common = dict(extra_args=extra_args, callback=callback, disable=disable)
    if info.uses_sigma_range:
        positive = sigmas[sigmas > 0]
        if info.steps_as_n:
            options.setdefault("n", len(sigmas) - 1)
        return info.fn(denoiser, x, float(positive.min()), float(sigmas[0]), **common, **options)
    return info.fn(denoiser, x, sigmas, **common, **options)
