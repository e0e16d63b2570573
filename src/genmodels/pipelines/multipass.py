"""Generations of more than one pass over a latent: SDXL base -> refiner, and the hires fix.

* ``base_then_refiner``: one sigma schedule split at the switch step (diffusers'
  ``denoising_end`` / ``denoising_start``; A1111's "Refiner switch at" by timestep); the refiner
  continues the base's latents and per-image noise generators, so refining with the base model
  itself gives the uninterrupted run bit for bit.
* ``hires_pass``: A1111's hires fix second pass (``hires.py``): upscale, fresh noise of the
  image's seed, the last ``steps`` steps of ``int(steps / strength)``, the prompt schedule
  placed after the first pass's steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import Tensor

from genmodels.diffusion.noise import SeededNoiseSampler
from genmodels.diffusion.samplers.registry import resolve_sampler
from genmodels.diffusion.sampling import sampler_sigmas
from genmodels.pipelines.controlnet import ControlUnit, prepare_control
from genmodels.pipelines.hires import crop_latents, hires_sigmas, upscale_latents
from genmodels.pipelines.latent_diffusion import LatentDiffusionPipeline
from genmodels.pipelines.metadata import GenerationParameters
from genmodels.pipelines.sampling_pass import encode_images, refiner_switch_index, run_pass
from genmodels.pipelines.scheduled_cfg import schedule_length

__all__ = ["base_then_refiner", "hires_pass"]


def base_then_refiner(
    pipe: LatentDiffusionPipeline, refiner: LatentDiffusionPipeline,
    params: GenerationParameters, shape: tuple[int, ...], sigmas: Tensor, name: str,
    seeds: list[int], init: Tensor | None, common: dict, control: tuple | None = None,
) -> Tensor:  # fmt: skip
    """The base model up to the switch step, the refiner from there on: one schedule, one set
    of noise generators (an ancestral sampler continues its noise stream). ``control`` (see
    ``run_pass``) is the base model's: a ControlNet fits one UNet."""
    k = refiner_switch_index(pipe.denoiser, sigmas, params.refiner_switch_at)
    calls = common["schedule_steps"] // params.steps  # model calls a step (A1111's count)
    noise = SeededNoiseSampler(torch.empty(shape, device=pipe.device), seeds)
    x = None
    if k > 0:
        x = run_pass(pipe, params, shape, sigmas[: k + 1], name, seeds, init=init, noise=noise,
                     final=k == len(sigmas) - 1, control=control, **common)  # fmt: skip
    if k == len(sigmas) - 1:
        return x
    start = sigmas[k:] if x is not None else sigmas
    return run_pass(refiner, params, shape, start, name, seeds, init=init if x is None else None,
                    x_start=x, noise=noise, start_step=k * calls, **common)  # fmt: skip


def hires_pass(
    pipe: LatentDiffusionPipeline, params: GenerationParameters, latents: Tensor,
    seeds: list[int], callback: Callable[[dict], None] | None,
    decode: Callable[[Tensor], Tensor], control: Sequence[ControlUnit] | None = None,
    max_pixels: int | None = None,
) -> Tensor:  # fmt: skip
    """A1111's hires fix second pass on the first pass's latents (``decode``: latents ->
    pixels in [0, 1], for the pixel upscalers); ControlNet units get their control images at
    the second pass's size (as A1111's ControlNet extension)."""
    hr = params.hires
    f = pipe.vae.downsample_factor
    (width, height), crop = hr.plan(params.width, params.height, f)
    upscaled = upscale_latents(
        latents, width // f * f, height // f * f, hr.upscaler, f, decode,
        lambda px: encode_images(pipe, px),
    )  # fmt: skip
    upscaled = crop_latents(upscaled, crop)
    steps = hr.steps or params.steps
    sampler = hr.sampler or params.sampler
    name, implied = resolve_sampler(sampler)
    scheduler = hr.scheduler or (implied if hr.sampler else None) or params.scheduler
    sigmas = hires_sigmas(
        lambda n: sampler_sigmas(pipe.denoiser, name, scheduler, n)[1], steps,
        hr.denoising_strength,
    )  # fmt: skip
    if hr.prompt is not None or hr.negative_prompt is not None:  # A1111's "Hires prompt"
        negative = _or(hr.negative_prompt, params.negative_prompt)
        params = replace(params, prompt=_or(hr.prompt, params.prompt), negative_prompt=negative)
    ctrl = None
    if control:
        h, w = upscaled.shape[-2] * f, upscaled.shape[-1] * f
        ctrl = (control, prepare_control(control, w, h, upscaled.shape[0], max_pixels), sigmas)
    return run_pass(pipe, params, tuple(upscaled.shape), sigmas, name, seeds,
                    schedule_steps=schedule_length(params.sampler, params.steps),
                    hires_steps=schedule_length(name, steps), init=upscaled, control=ctrl,
                    callback=callback)  # fmt: skip


def _or(value: str | None, default: str) -> str:
    return default if value is None else value
