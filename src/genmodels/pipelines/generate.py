"""txt2img, img2img and inpainting with a ``LatentDiffusionPipeline`` (Rombach et al. 2022).

    result = txt2img(pipe, "a cat", steps=20, cfg_scale=7, sampler="DPM++ 2M Karras", seed=1)
    result.images[0].save("cat.png")

Reproducible: the initial noise and the samplers' noise come from per-image CPU generators
(seed, seed+1, ...), so a batch of N equals N single runs and the device does not matter.

img2img follows A1111's k-diffusion path: the full schedule for ``steps`` is built and the last
``t_enc + 1`` steps run, ``t_enc = int(min(strength, 0.999) * steps)``, starting from
``init_latent + noise * sigmas[steps - t_enc - 1]``; strength 0 skips sampling and returns the
VAE round trip of the input. Latents of the input image are the posterior mode (A1111 samples
the posterior with the global RNG, which no seed reproduces).

Inpainting (mask: 1 = repaint, 0 = keep): a 9-channel model gets
``c_concat = cat([mask, encode(image * (1 - mask))])`` next to the noisy latent (ldm / A1111);
an ordinary model keeps the masked-out region by blending every x0 estimate with the image
latent (A1111's CFGDenoiser mask), then the kept pixels are pasted back over the decoded image.

Beyond one pass (``sampling_pass.run_pass``): ``hires=HiresFix(...)`` adds A1111's hires-fix
second pass (``hires.py``); ``refiner=PIPE`` hands the latents to an SDXL refiner at
``refiner_switch_at`` of the schedule (diffusers' ``denoising_end`` / ``denoising_start``: the
same sigma schedule and noise generators, the refiner from the first step whose timestep is
below ``round(1000 * (1 - switch))``). Prompts follow A1111's emphasis, ``BREAK``, prompt
editing and alternation (``prompt_schedule.py``), as per-step conditioning in the CFG denoiser
(``scheduled_cfg.py``); ``clip_skip``, ``guidance_rescale`` and A1111's variation seeds are
options (``options.py``). Sizes: any multiple of 8.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from genmodels.diffusion.samplers.registry import resolve_sampler
from genmodels.diffusion.sampling import sampler_sigmas
from genmodels.diffusion.schedules import resolve_scheduler
from genmodels.pipelines.conditioning import SDXLSizeConditioning
from genmodels.pipelines.controlnet import ControlUnit, prepare_control
from genmodels.pipelines.controlnet_infotext import control_infotext
from genmodels.pipelines.extra_networks import adapter_infotext
from genmodels.pipelines.finite import check_finite
from genmodels.pipelines.hires import HiresFix
from genmodels.pipelines.image_reading import load_image
from genmodels.pipelines.images import pil_to_tensor, tensor_to_pil
from genmodels.pipelines.latent_diffusion import LatentDiffusionPipeline
from genmodels.pipelines.limits import GenerationLimits, ModelSize, check_generation
from genmodels.pipelines.metadata import MAX_INFOTEXT, GenerationParameters, format_infotext
from genmodels.pipelines.multipass import base_then_refiner, hires_pass
from genmodels.pipelines.options import check_options, refiner_fields
from genmodels.pipelines.sampling_pass import LatentMaskBlend, encode_images, run_pass
from genmodels.pipelines.scheduled_cfg import schedule_length
from genmodels.pipelines.seeds import MAX_SEED, resolve_seeds

__all__ = [
    "GenerationResult", "LatentMaskBlend", "decode_latents", "encode_images", "img2img", "inpaint",
    "MAX_SEED", "model_size", "resolve_seeds", "sampling_steps", "size_multiple", "txt2img",
    "HiresFix",
]  # fmt: skip

ImageInput = Image.Image | Tensor | str | os.PathLike


@dataclass
class GenerationResult:
    images: list[Image.Image]
    pixels: Tensor  # (B, 3, H, W) float32 in [0, 1], on the CPU
    latents: Tensor  # (B, C, H/f, W/f) final latents (float32)
    parameters: list[GenerationParameters]  # one per image (its own seed)


# -- inputs ------------------------------------------------------------------------------------


def size_multiple(pipe: LatentDiffusionPipeline) -> int:
    """Sizes must be multiples of this: the VAE factor (8 for SD 1.x/2.x/XL, as A1111, ComfyUI
    and diffusers). The UNet takes any latent size: each upsampling meets its skip's size
    (``nn.updown.Upsample``); only a ``resblock_updown`` UNet needs whole pixels at every level."""
    f = pipe.vae.downsample_factor
    if pipe.unet.config.resblock_updown:
        return f * 2 ** (len(pipe.unet.config.channel_mult) - 1)
    return max(8, f)  # 8 at least: the rule of the UIs, whatever a tiny test VAE's factor


def model_size(pipe: LatentDiffusionPipeline) -> ModelSize:
    """The sizes of ``pipe`` that the memory estimate uses."""
    vae = pipe.vae.config
    tiling = pipe.vae.tiling
    return ModelSize(
        latent_channels=vae.embed_dim, vae_factor=pipe.vae.downsample_factor,
        vae_channels=vae.ch * vae.ch_mult[0], unet_channels=pipe.unet.config.model_channels,
        tile_size=tiling.tile_size if tiling is not None else None,
    )  # fmt: skip


def _check_size(pipe: LatentDiffusionPipeline, width: object, height: object) -> None:
    m = size_multiple(pipe)
    f = pipe.vae.downsample_factor
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0 or v % m:
            why = f"VAE factor {f}" + (f" x UNet downsampling {m // f}" if m > 8 else "")
            raise ValueError(f"{name} must be a positive multiple of {m} for this model ({why}), "
                             f"got {v!r}")  # fmt: skip


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_options(steps: object, cfg_scale: object, batch_size: object) -> None:
    if not _is_int(steps) or steps < 1:  # type: ignore[operator]
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not _is_int(batch_size) or batch_size < 1:  # type: ignore[operator]
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    number = isinstance(cfg_scale, int | float) and not isinstance(cfg_scale, bool)
    if not number or not math.isfinite(cfg_scale) or cfg_scale < 0:  # type: ignore[arg-type]
        raise ValueError(f"cfg_scale must be a finite number >= 0, got {cfg_scale!r}")


def _as_images(
    image: ImageInput, mode: str, what: str, limits: GenerationLimits | None = None
) -> Tensor:
    """(B, C, H, W) float32 in [0, 1] from a path, a PIL image or a tensor."""
    if isinstance(image, str | os.PathLike):
        image = load_image(image, mode, None if limits is None else limits.max_pixels)
    if isinstance(image, Image.Image):
        return pil_to_tensor(image, mode)[None]
    if not isinstance(image, Tensor):
        raise ValueError(f"{what} must be a PIL image, a path or a tensor, got {type(image)}")
    channels = 3 if mode == "RGB" else 1
    t = image.detach().float().cpu()
    t = t[None] if t.ndim == 3 else t[None, None] if t.ndim == 2 else t
    if t.ndim != 4 or t.shape[1] != channels:
        raise ValueError(f"{what} tensor must be (B, {channels}, H, W), got {tuple(image.shape)}")
    check_finite(t, what)
    return t


def _fit_batch(t: Tensor, batch_size: int, what: str) -> Tensor:
    if t.shape[0] == batch_size:
        return t
    if t.shape[0] != 1:
        raise ValueError(f"{what} has batch {t.shape[0]}, expected 1 or batch_size={batch_size}")
    return t.expand(batch_size, *t.shape[1:])


def _resize(t: Tensor, width: int, height: int, mode: str = "bicubic") -> Tensor:
    if t.shape[-2:] == (height, width):
        return t
    antialias = mode in ("bicubic", "bilinear")
    return F.interpolate(t, size=(height, width), mode=mode, antialias=antialias).clamp(0, 1)


def _check_strength(strength: object) -> float:
    if not isinstance(strength, int | float) or isinstance(strength, bool):
        raise ValueError(f"strength must be a number in [0, 1], got {strength!r}")
    if not 0.0 <= strength <= 1.0:  # also refuses NaN
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return float(strength)


def sampling_steps(steps: int, strength: float | None) -> int:
    """Steps run for ``strength`` (A1111 img2img: t_enc + 1 with t_enc = int(min(s, 0.999) n))."""
    if strength is None:
        return steps
    return 0 if strength == 0 else int(min(strength, 0.999) * steps) + 1


# -- VAE ---------------------------------------------------------------------------------------


@torch.no_grad()
def decode_latents(pipe: LatentDiffusionPipeline, latents: Tensor) -> Tensor:
    """Latents -> (B, 3, H, W) float32 in [0, 1] on the CPU; a reduced-precision decode that
    overflows (inf/NaN) is redone in float32 (as A1111's automatic VAE upcast)."""
    vae = pipe.vae
    dtype = next(vae.parameters()).dtype
    x = vae.decode_latents(latents.to(dtype))
    if dtype != torch.float32 and not bool(torch.isfinite(x).all()):
        vae.float()
        try:
            x = vae.decode_latents(latents.float())
        finally:
            vae.to(dtype)
    check_finite(x, "the VAE decoder's output (NaN/Inf VAE weights?)")
    return ((x.float() + 1) / 2).clamp(0, 1).cpu()


# -- core --------------------------------------------------------------------------------------


def _run(
    pipe: LatentDiffusionPipeline, params: GenerationParameters, batch_size: int,
    callback: Callable[[dict], None] | None, init: Tensor | None = None,
    images: Tensor | None = None, mask: Tensor | None = None,
    refiner: LatentDiffusionPipeline | None = None,
    control: Sequence[ControlUnit] | None = None, max_pixels: int | None = None,
) -> GenerationResult:  # fmt: skip
    if control:  # ControlNet units: images read and checked first; recorded as A1111 does
        hints = prepare_control(control, params.width, params.height, batch_size, max_pixels)
        params = replace(params, extra={**params.extra, **control_infotext(control)})
    f = pipe.vae.downsample_factor
    shape = (batch_size, pipe.vae.config.embed_dim, params.height // f, params.width // f)
    seeds = resolve_seeds(params.seed, batch_size)
    name, sigmas = sampler_sigmas(pipe.denoiser, params.sampler, params.scheduler, params.steps)
    strength = params.denoising_strength
    if init is not None and strength is not None:
        if strength == 0.0:  # nothing to denoise: the VAE round trip
            return _finish(pipe, init, params, seeds, images, mask)
        n = len(sigmas) - 1
        sigmas = sigmas[n - sampling_steps(n, strength) :]
    length = schedule_length(name, params.steps)  # the prompt schedule's steps (A1111)
    common = dict(schedule_steps=length, images=images, mask=mask, callback=callback)
    ctrl = (control, hints, sigmas) if control else None  # the base model's ControlNets
    if refiner is None:
        latents = run_pass(pipe, params, shape, sigmas, name, seeds, init=init, control=ctrl,
                           **common)  # fmt: skip
    else:
        latents = base_then_refiner(pipe, refiner, params, shape, sigmas, name, seeds, init,
                                    common, ctrl)  # fmt: skip
    if params.hires is not None:
        decode = lambda x: decode_latents(pipe, x)  # noqa: E731
        latents = hires_pass(pipe, params, latents, seeds, callback, decode, control,
                             max_pixels)  # fmt: skip
    return _finish(refiner or pipe, latents, params, seeds, images, mask)


def _finish(
    pipe: LatentDiffusionPipeline, latents: Tensor, params: GenerationParameters,
    seeds: list[int], images: Tensor | None, mask: Tensor | None,
) -> GenerationResult:  # fmt: skip
    pixels = decode_latents(pipe, latents)
    if mask is not None and images is not None:  # paste the kept pixels back (A1111 overlay)
        m = mask.round()
        pixels = m * pixels + (1 - m) * images
    per_image = [replace(params, seed=s) for s in seeds]
    return GenerationResult(tensor_to_pil(pixels), pixels, latents.float().cpu(), per_image)


def _parameters(
    pipe: LatentDiffusionPipeline, prompt: object, negative_prompt: object, width: int,
    height: int, steps: int, cfg_scale: float, sampler: str, scheduler: str | None,
    seed: int | None, batch_size: int, strength: float | None, limits: GenerationLimits,
    sdxl: SDXLSizeConditioning | None = None, **options: Any,
) -> GenerationParameters:  # fmt: skip
    for what, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        if not isinstance(text, str):
            raise ValueError(f"{what} must be a str, got {type(text).__name__}")
    _check_size(pipe, width, height)
    _check_options(steps, cfg_scale, batch_size)
    check_generation(width, height, batch_size, steps, limits, model_size(pipe), pipe.device,
                     pipe.dtype)  # fmt: skip
    name, implied = resolve_sampler(sampler)  # ValueError listing the valid names
    sched = resolve_scheduler(scheduler) if scheduler else implied or "normal"
    seed = resolve_seeds(seed, batch_size)[0]
    if sdxl is not None and not pipe.is_sdxl:
        raise ValueError(f"SDXL size conditioning needs an SDXL model, not {pipe.model_type}")
    p = GenerationParameters(
        prompt=prompt, negative_prompt=negative_prompt, steps=steps, sampler=name,  # type: ignore[arg-type]
        scheduler=sched, cfg_scale=float(cfg_scale), seed=seed, width=width, height=height,
        denoising_strength=strength, model_name=_model_name(pipe),
        **_sdxl_fields(sdxl), **check_options(pipe, **options),
        extra=adapter_infotext(pipe, prompt, negative_prompt),  # type: ignore[arg-type]
    )  # fmt: skip
    if p.hires is not None and p.hires.target_size(width, height, 1) == (width, height):
        p = replace(p, hires=None)  # A1111: upscaling to the same size disables the hires fix
    if p.hires is not None:
        w, h = p.hires.target_size(width, height)
        check_generation(w, h, batch_size, p.hires.steps or steps, limits, model_size(pipe),
                         pipe.device, pipe.dtype)  # fmt: skip
    if len(format_infotext(p)) > MAX_INFOTEXT - 1000:  # room for the model hash and name
        raise ValueError(f"the prompts are too long to store in a PNG ({MAX_INFOTEXT} characters)")
    return p


def _sdxl_fields(sdxl: SDXLSizeConditioning | None) -> dict[str, Any]:
    """``SDXLSizeConditioning`` (sizes as (height, width)) as parameters fields (width, height)."""
    if sdxl is None:
        return {}
    target = sdxl.target_size
    return dict(
        sdxl_original_size=(sdxl.original_size[1], sdxl.original_size[0]),
        sdxl_crop=tuple(sdxl.crop_coords_top_left),
        sdxl_target_size=None if target is None else (target[1], target[0]),
        aesthetic_score=sdxl.aesthetic_score,
        negative_aesthetic_score=sdxl.negative_aesthetic_score,
    )  # fmt: skip


def _model_name(pipe: LatentDiffusionPipeline) -> str | None:
    source = getattr(pipe.info, "source", None)
    if not source or source.startswith("build_pipeline("):
        return None
    return os.path.splitext(os.path.basename(os.path.normpath(source)))[0]


# -- public ------------------------------------------------------------------------------------


def txt2img(
    pipe: LatentDiffusionPipeline,
    prompt: str,
    negative_prompt: str = "",
    width: int = 512,
    height: int = 512,
    steps: int = 20,
    cfg_scale: float = 7.0,
    sampler: str = "euler",
    scheduler: str | None = None,
    seed: int | None = 0,
    batch_size: int = 1,
    callback: Callable[[dict], None] | None = None,
    sdxl: SDXLSizeConditioning | None = None,
    limits: GenerationLimits = GenerationLimits(),  # noqa: B008 (frozen)
    hires: HiresFix | None = None,
    refiner: LatentDiffusionPipeline | None = None,
    refiner_switch_at: float = 0.8,
    control: Sequence[ControlUnit] | None = None,
    **options: Any,
) -> GenerationResult:
    """Images from noise; image i uses seed ``seed + i`` (seed None or -1: random).

    ``hires``: a hires-fix second pass; ``refiner``: an SDXL refiner taking over from the
    ``refiner_switch_at`` fraction of the schedule on; ``control``: ControlNet units
    (``pipelines.controlnet.ControlUnit``, for every mode; the base model's, and the hires
    pass's at its size); ``options``: ``clip_skip``, ``guidance_rescale``, ``variation_seed``,
    ``variation_strength``, ``eta`` (see ``check_options``). Prompts may use A1111 emphasis,
    ``BREAK``, prompt editing and alternation."""
    p = _parameters(pipe, prompt, negative_prompt, width, height, steps, cfg_scale, sampler,
                    scheduler, seed, batch_size, None, limits, sdxl, hires=hires,
                    **refiner_fields(pipe, refiner, refiner_switch_at), **options)  # fmt: skip
    if hires is not None and refiner is not None:
        raise ValueError("hires fix with a refiner is not supported; run them one at a time")
    return _run(pipe, p, batch_size, callback, refiner=refiner, control=control,
                max_pixels=limits.max_pixels)  # fmt: skip


def img2img(
    pipe: LatentDiffusionPipeline,
    image: ImageInput,
    prompt: str,
    strength: float = 0.75,
    negative_prompt: str = "",
    width: int | None = None,
    height: int | None = None,
    steps: int = 20,
    cfg_scale: float = 7.0,
    sampler: str = "euler",
    scheduler: str | None = None,
    seed: int | None = 0,
    batch_size: int = 1,
    callback: Callable[[dict], None] | None = None,
    sdxl: SDXLSizeConditioning | None = None,
    limits: GenerationLimits = GenerationLimits(),  # noqa: B008 (frozen)
    refiner: LatentDiffusionPipeline | None = None,
    refiner_switch_at: float = 0.8,
    control: Sequence[ControlUnit] | None = None,
    **options: Any,
) -> GenerationResult:
    """Re-noise ``image`` to ``strength`` of the schedule and denoise it (A1111 semantics).

    ``width`` / ``height`` default to the image's size; otherwise the image is resized.
    ``refiner`` and ``options`` as for ``txt2img``."""
    strength = _check_strength(strength)
    images = _as_images(image, "RGB", "image", limits)
    width, height = width or images.shape[-1], height or images.shape[-2]
    p = _parameters(pipe, prompt, negative_prompt, width, height, steps, cfg_scale, sampler,
                    scheduler, seed, batch_size, strength, limits, sdxl,
                    **refiner_fields(pipe, refiner, refiner_switch_at), **options)  # fmt: skip
    images = _fit_batch(_resize(images, width, height), batch_size, "image")
    init = encode_images(pipe, images)
    return _run(pipe, p, batch_size, callback, init=init, refiner=refiner, control=control,
                max_pixels=limits.max_pixels)  # fmt: skip


def inpaint(
    pipe: LatentDiffusionPipeline,
    image: ImageInput,
    mask: ImageInput,
    prompt: str,
    strength: float = 1.0,
    negative_prompt: str = "",
    width: int | None = None,
    height: int | None = None,
    steps: int = 20,
    cfg_scale: float = 7.0,
    sampler: str = "euler",
    scheduler: str | None = None,
    seed: int | None = 0,
    batch_size: int = 1,
    callback: Callable[[dict], None] | None = None,
    sdxl: SDXLSizeConditioning | None = None,
    limits: GenerationLimits = GenerationLimits(),  # noqa: B008 (frozen)
    control: Sequence[ControlUnit] | None = None,
    **options: Any,
) -> GenerationResult:
    """Repaint where ``mask`` is 1 (white), keep where it is 0.

    The mask (rounded to 0/1) must have the image's size. ``width`` / ``height`` default to the
    image's size; otherwise image and mask are resized (as A1111's "just resize")."""
    strength = _check_strength(strength)
    images = _as_images(image, "RGB", "image", limits)
    masks = _as_images(mask, "L", "mask", limits)
    if masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"mask size {tuple(masks.shape[-2:][::-1])} (WxH) differs from the image size "
            f"{tuple(images.shape[-2:][::-1])}"
        )
    width, height = width or images.shape[-1], height or images.shape[-2]
    p = _parameters(pipe, prompt, negative_prompt, width, height, steps, cfg_scale, sampler,
                    scheduler, seed, batch_size, strength, limits, sdxl, **options)  # fmt: skip
    images = _fit_batch(_resize(images, width, height), batch_size, "image")
    masks = _fit_batch(_resize(masks, width, height, "bilinear"), batch_size, "mask").round()
    init = encode_images(pipe, images)
    return _run(pipe, p, batch_size, callback, init=init, images=images, mask=masks,
                control=control, max_pixels=limits.max_pixels)  # fmt: skip
