"""One sampling pass of a pipeline over a sigma schedule, and the pieces around it.

A generation is one pass (txt2img, img2img, inpaint) or several over one latent: the SDXL base
then the refiner from the switch step on (one schedule, the refiner continuing the base's noise
generators), or a first pass then a hires-fix pass at the upscaled size. ``run_pass`` wires up
a pass: the prompt schedule's conditioning (with clip skip), classifier-free guidance with
per-step prompts, inpainting inputs, variation noise, the training-free accelerations (DeepCache,
the CFG cut-off) and the NaN watch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genmodels.diffusion.denoisers import DiscreteDenoiser, with_model
from genmodels.diffusion.guidance import cfg_cutoff_range
from genmodels.diffusion.noise import SeededNoiseSampler, variation_noise
from genmodels.diffusion.samplers.registry import get_sampler
from genmodels.diffusion.sampling import sample
from genmodels.models.feature_cache import CachedModel, DeepCache
from genmodels.pipelines.conditioning import SDXLSizeConditioning
from genmodels.pipelines.controlnet import ControlUnit, apply_control
from genmodels.pipelines.extra_networks import strip_extra_networks
from genmodels.pipelines.finite import FiniteWatch
from genmodels.pipelines.latent_diffusion import LatentDiffusionPipeline
from genmodels.pipelines.metadata import GenerationParameters
from genmodels.pipelines.scheduled_cfg import ScheduledCFG, clip_skip, schedule_conditioning

__all__ = [
    "LatentMaskBlend", "encode_images", "refiner_switch_index", "run_pass", "sdxl_conditioning",
]  # fmt: skip


class LatentMaskBlend(nn.Module):
    """Denoiser wrapper keeping ``init`` where ``keep`` is 1: D' = keep * init + (1 - keep) * D."""

    def __init__(self, denoiser: Callable[..., Tensor], init: Tensor, keep: Tensor) -> None:
        super().__init__()
        self.denoiser, self.init, self.keep = denoiser, init, keep

    def forward(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        return self.keep * self.init + (1 - self.keep) * self.denoiser(x, sigma, **cond)


class _ConcatInput(nn.Module):
    """A 9-channel inpainting UNet called as ``model(x, t, c_concat=..., **cond)``."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor, c_concat: Tensor, **cond: Any) -> Tensor:
        return self.unet(torch.cat([x, c_concat.to(x.dtype)], dim=1), t, **cond)


@torch.no_grad()
def encode_images(pipe: LatentDiffusionPipeline, images: Tensor) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> diffusion latents (posterior mode), float32."""
    x = (images * 2 - 1).to(device=pipe.device, dtype=pipe.dtype)
    return pipe.vae.encode_latents(x, sample=False).float()


def _inpaint_denoiser(pipe: LatentDiffusionPipeline) -> DiscreteDenoiser:
    base = pipe.denoiser
    alphas_cumprod = 1 / (1 + base.sigmas.double() ** 2)
    wrapped = DiscreteDenoiser(_ConcatInput(pipe.unet), alphas_cumprod, base.prediction)
    wrapped.quantize = base.quantize
    return wrapped.to(pipe.device)


def _concat_cond(pipe: LatentDiffusionPipeline, images: Tensor, mask: Tensor, shape) -> Tensor:
    """c_concat = [mask, latent of image * (1 - mask)] at latent resolution (ldm / A1111)."""
    mask = mask.round()
    masked = encode_images(pipe, images * (1 - mask) + 0.5 * mask)  # masked pixels: 0 in [-1, 1]
    latent_mask = F.interpolate(mask, size=shape[-2:]).to(masked)
    return torch.cat([latent_mask, masked], dim=1)


def sdxl_conditioning(
    params: GenerationParameters, size: tuple[int, int]
) -> SDXLSizeConditioning:  # fmt: skip
    """SDXL micro-conditioning of ``params`` for a generated (height, width) ``size``
    (the parameters hold sizes as (width, height), as A1111's ``Size``)."""
    wh = params.sdxl_original_size
    crop = params.sdxl_crop or (0, 0)
    target = params.sdxl_target_size
    return SDXLSizeConditioning(
        original_size=(wh[1], wh[0]) if wh else size,
        crop_coords_top_left=crop,
        target_size=(target[1], target[0]) if target else None,
        aesthetic_score=6.0 if params.aesthetic_score is None else params.aesthetic_score,
        negative_aesthetic_score=2.5 if params.negative_aesthetic_score is None
        else params.negative_aesthetic_score,
    )  # fmt: skip


def refiner_switch_index(denoiser: Any, sigmas: Tensor, switch_at: float) -> int:
    """Steps the base model runs before the refiner takes over: those whose timestep is at or
    above ``round(T * (1 - switch_at))`` (diffusers' ``denoising_end`` / ``denoising_start``
    cutoff; A1111 switches by timestep the same way)."""
    if not 0.0 <= switch_at <= 1.0:
        raise ValueError(f"refiner switch point must be in [0, 1], got {switch_at}")
    n_train = len(denoiser.sigmas)
    cutoff = round(n_train - switch_at * n_train)
    t = denoiser.sigma_to_t(sigmas[:-1].to(denoiser.sigmas.device)).cpu()
    return int((t >= cutoff).sum())


def run_pass(
    pipe: LatentDiffusionPipeline, params: GenerationParameters, shape: tuple[int, ...],
    sigmas: Tensor, sampler: str, seeds: list[int], *, schedule_steps: int,
    hires_steps: int | None = None, start_step: int = 0, init: Tensor | None = None,
    x_start: Tensor | None = None, noise: SeededNoiseSampler | None = None,
    images: Tensor | None = None, mask: Tensor | None = None,
    callback: Callable[[dict], None] | None = None, final: bool = True,
    control: tuple[Sequence[ControlUnit], list[Tensor], Tensor] | None = None,
) -> Tensor:  # fmt: skip
    """Latents after sampling ``shape`` over ``sigmas`` with ``params``' prompts and guidance.

    ``schedule_steps`` / ``hires_steps`` / ``start_step`` place the pass on the prompt schedule;
    ``init`` (img2img) is added to the first noise, ``x_start`` replaces it (a continued run,
    with the first run's ``noise`` sampler); ``final=False`` leaves an inpainting blend to the
    pass that finishes the image. ``control``: (ControlNet units, their hints at this size, the
    sigmas their start / end fractions refer to)."""
    f = pipe.vae.downsample_factor
    size = (shape[-2] * f, shape[-1] * f)
    # <lora:...> tags are applied to the weights (extra_networks), not encoded; A1111 strips
    # them before the prompt schedule is parsed
    with clip_skip(pipe.text_encoder, params.clip_skip, pipe.model_type):
        cond, uncond = schedule_conditioning(
            pipe.text_encoder, pipe.model_type, strip_extra_networks(params.prompt),
            params.negative_prompt,
            schedule_steps, size, sdxl_conditioning(params, size), hires_steps,
        )  # fmt: skip
    denoiser: Callable[..., Tensor] = pipe.denoiser
    extra: dict[str, Tensor] = {}
    if pipe.inpainting:
        if images is None:  # txt2img / img2img with an inpainting model: all to repaint
            images = torch.full((shape[0], 3, *size), 0.5)
        extra["c_concat"] = _concat_cond(
            pipe, images, torch.ones(shape[0], 1, *size) if mask is None else mask, shape
        )
        denoiser = _inpaint_denoiser(pipe)
    if params.cache_interval > 1:  # DeepCache, one cache per pass (Ma et al. 2023)
        cache = DeepCache(params.cache_interval, params.cache_depth)
        denoiser = with_model(denoiser, CachedModel(denoiser.model, cache))
    if control:
        denoiser = apply_control(denoiser, *control)
    guided = ScheduledCFG(denoiser, cond, uncond, params.cfg_scale, params.guidance_rescale,
                          dict(extra), start_step, cfg_cutoff_range(params.cfg_cutoff))  # fmt: skip
    model: Callable[..., Tensor] = guided
    keep = None
    if mask is not None and init is not None and not pipe.inpainting:
        keep = 1 - F.interpolate(mask, size=shape[-2:], mode="area").round().to(init)
        model = LatentMaskBlend(guided, init, keep)
    watch = FiniteWatch(callback, steps=len(sigmas) - 1)

    transform = None
    if params.variation_strength and params.variation_seed is not None:
        var_seeds = [params.variation_seed] * shape[0]  # A1111: one subseed for the batch
        transform = lambda n: variation_noise(n, var_seeds, params.variation_strength)  # noqa: E731
    options = {}
    if params.eta is not None and "eta" in inspect.signature(get_sampler(sampler)).parameters:
        options["eta"] = params.eta  # samplers without noise have no eta (A1111 ignores it too)
    latents = sample(
        model, shape, sampler=sampler, sigmas=sigmas, seeds=seeds, init=init, extra_args=extra,
        callback=watch, disable=True, device=pipe.device, dtype=torch.float32, noise=noise,
        x_start=x_start, noise_transform=transform, **options,
    )  # fmt: skip
    watch.check(latents)
    if keep is not None and final:
        latents = keep * init + (1 - keep) * latents
    return latents
