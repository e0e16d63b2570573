"""A1111 txt2img / img2img requests -> a worker ``Task`` that calls ``pipelines.generate``.

A request is checked before it is queued (settings this server does not implement, sampler,
scheduler, size multiple, limits, images decoded), so a bad one is answered at once with a 400
rather than after the queue. The task runs ``n_iter`` batches of ``batch_size`` images with
seeds ``seed + i`` (A1111), each image PNG-encoded with its A1111 infotext, and builds the
response: images (a grid first when there are several, as A1111's ``return_grid``), the
request echoed as ``parameters``, and ``info``, A1111's ``Processed.js()`` JSON.

Not implemented, and refused with a 400 when set: hires fix, face restoration, tiling,
variation seeds, styles, scripts and always-on extension scripts, a refiner, resize modes other
than "just resize". Accepted and without effect: ``mask_blur`` (the mask is binarised, as
A1111 with blur 0), ``inpainting_fill`` (the image's own latent is the start, A1111's
"original"), ``inpaint_full_res`` (the whole image is repainted), ``eta`` and ``s_churn`` /
``s_tmin`` / ``s_tmax`` / ``s_noise`` (each sampler's defaults), ``override_settings`` other
than the current checkpoint. ``s_min_uncond`` is A1111's "NGMS": the CFG cut-off.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image, ImageOps

from genmodels import __version__
from genmodels.diffusion.guidance import cfg_cutoff_range
from genmodels.diffusion.samplers.registry import resolve_sampler
from genmodels.diffusion.schedules import resolve_scheduler
from genmodels.pipelines import generate
from genmodels.pipelines.images import image_grid, tensor_to_pil
from genmodels.pipelines.limits import check_generation, check_pixels
from genmodels.pipelines.metadata import GenerationParameters, format_infotext, parse_infotext
from genmodels.pipelines.outputs import image_name, write_output
from genmodels.serve.adapters import check_adapters, use_adapters
from genmodels.serve.codec import b64_png, decode_b64_image
from genmodels.serve.config import ServeConfig
from genmodels.serve.schemas import ImageToImageRequest, TextToImageRequest
from genmodels.serve.worker import Interrupted, LoadedModel, Task, TaskContext

__all__ = ["Generation", "check_supported", "generation_task", "plan_generation"]


@dataclass
class Generation:
    """A checked request: what the task passes to ``pipelines.generate``."""

    mode: str  # "txt2img" | "img2img" | "inpaint"
    request: TextToImageRequest
    template: GenerationParameters  # the first image's parameters (seed: the first seed)
    image: Image.Image | None = None
    mask: Image.Image | None = None
    return_grid: bool = True  # A1111's option: a grid first when there are several images


def check_supported(req: TextToImageRequest) -> None:
    """ValueError naming the first setting that this server does not implement."""
    unsupported = {
        "enable_hr (hires fix)": req.enable_hr,
        "restore_faces": req.restore_faces,
        "tiling": req.tiling,
        "subseed_strength (variation seeds)": req.subseed_strength > 0,
        "styles": bool(req.styles),
        "script_name": bool(req.script_name),
        "alwayson_scripts (extensions)": bool(req.alwayson_scripts),
        "refiner_checkpoint": bool(req.refiner_checkpoint),
    }
    if isinstance(req, ImageToImageRequest):
        unsupported["resize_mode other than 0 (just resize)"] = req.resize_mode != 0
    for name, used in unsupported.items():
        if used:
            raise ValueError(f"{name} is not supported by genmodels serve")


def _check_override(req: TextToImageRequest, model: LoadedModel) -> None:
    wanted = (req.override_settings or {}).get("sd_model_checkpoint")
    if wanted and (not isinstance(wanted, str) or wanted.strip() not in model.entry.names()):
        raise ValueError(
            f"override_settings.sd_model_checkpoint {wanted!r} is not the loaded checkpoint "
            f"{model.entry.title!r}; switch with POST /sdapi/v1/options first"
        )


def _cfg_cutoff(req: TextToImageRequest) -> float:
    """A1111's ``s_min_uncond`` (NGMS): no unconditional pass below this sigma."""
    cutoff = float(req.s_min_uncond or 0.0)
    cfg_cutoff_range(cutoff)  # ValueError (400) unless a finite sigma >= 0
    return cutoff


def _sampler(req: TextToImageRequest) -> tuple[str, str]:
    """(registry sampler, registry scheduler): A1111's sampler_name (or the deprecated
    sampler_index) and scheduler; "automatic" leaves the schedule to the sampler name."""
    name, implied = resolve_sampler(req.sampler_name or req.sampler_index)
    scheduler = (req.scheduler or "").strip()
    if scheduler and scheduler.lower() != "automatic":
        return name, resolve_scheduler(scheduler)
    return name, implied or "normal"


def plan_generation(
    mode: str, req: TextToImageRequest, config: ServeConfig, model: LoadedModel | None,
    return_grid: bool = True,
) -> Generation:  # fmt: skip
    """Check ``req`` (against the loaded model and the limits when a model is loaded; the
    library checks again when the task runs) and decode its images; ValueError when bad."""
    check_supported(req)
    check_adapters(req.prompt, config.lora_dirs)
    sampler, scheduler = _sampler(req)
    if model is not None:
        _check_override(req, model)
        pipe = model.pipe
        m = generate.size_multiple(pipe)
        for name, v in (("width", req.width), ("height", req.height)):
            if v % m:
                raise ValueError(f"{name} must be a multiple of {m} for this model, got {v}")
        check_generation(req.width, req.height, req.batch_size, req.steps, config.limits,
                         generate.model_size(pipe), pipe.device, pipe.dtype)  # fmt: skip
    seed = generate.resolve_seeds(req.seed, req.batch_size * req.n_iter)[0]
    strength = None if mode == "txt2img" else req.denoising_strength
    if mode != "txt2img" and strength is None:
        strength = 0.75
    template = GenerationParameters(
        prompt=req.prompt, negative_prompt=req.negative_prompt, steps=req.steps,
        sampler=sampler, scheduler=scheduler, cfg_scale=req.cfg_scale, seed=seed,
        width=req.width, height=req.height, denoising_strength=strength,
        cfg_cutoff=_cfg_cutoff(req),
    )  # fmt: skip
    plan = Generation(mode, req, template, return_grid=return_grid)
    if isinstance(req, ImageToImageRequest):
        _decode_images(plan, req, config)
    return plan


def _decode_images(plan: Generation, req: ImageToImageRequest, config: ServeConfig) -> None:
    if len(req.init_images) != 1:
        raise ValueError(f"init_images must hold exactly one image, got {len(req.init_images)}")
    max_pixels = config.limits.max_pixels
    plan.image = decode_b64_image(req.init_images[0], "init_images[0]", "RGB", max_pixels)
    if req.mask is not None:
        mask = decode_b64_image(req.mask, "mask", "L", max_pixels)
        if mask.size != plan.image.size:  # A1111 resizes the mask with the image
            mask = mask.resize(plan.image.size, Image.Resampling.BILINEAR)
        plan.mask = ImageOps.invert(mask) if req.inpainting_mask_invert else mask
        plan.mode = "inpaint"


def generation_task(plan: Generation, config: ServeConfig) -> Task:
    req = plan.request
    steps = generate.sampling_steps(req.steps, plan.template.denoising_strength)
    return Task(plan.mode, lambda ctx: _run(ctx, plan, config), steps=steps, n_iter=req.n_iter)


def _batch(ctx: TaskContext, plan: Generation, seed: int) -> list[tuple[Image.Image, Any]]:
    """One batch: [(image, parameters)]; an interrupted batch gives its last x0 estimate."""
    pipe, t, req = ctx.model.pipe, plan.template, plan.request
    kw = dict(
        prompt=t.prompt, negative_prompt=t.negative_prompt, width=t.width, height=t.height,
        steps=t.steps, cfg_scale=t.cfg_scale, sampler=t.sampler, scheduler=t.scheduler,
        seed=seed, batch_size=req.batch_size, callback=ctx.sampler_callback,
        cfg_cutoff=t.cfg_cutoff,
    )  # fmt: skip
    try:
        if plan.mode == "txt2img":
            out = generate.txt2img(pipe, **kw)
        elif plan.mode == "img2img":
            out = generate.img2img(pipe, plan.image, strength=t.denoising_strength, **kw)
        else:
            out = generate.inpaint(pipe, plan.image, plan.mask, strength=t.denoising_strength,
                                   **kw)  # fmt: skip
    except Interrupted as stop:  # A1111 returns the images as they were when interrupted
        if stop.latents is None:
            return []
        images = tensor_to_pil(generate.decode_latents(pipe, stop.latents))
        params = [replace(t, seed=seed + i) for i in range(len(images))]
    else:
        images, params = out.images, out.parameters
    entry = ctx.model.entry
    params = [replace(p, model_hash=entry.short_hash, model_name=entry.model_name)
              for p in params]  # fmt: skip
    return list(zip(images, params))


def _run(ctx: TaskContext, plan: Generation, config: ServeConfig) -> dict[str, Any]:
    req = plan.request
    use_adapters(ctx.model.pipe, plan.template.prompt, plan.template.negative_prompt,
                 config.lora_dirs, config.embeddings_dirs)  # fmt: skip
    results: list[tuple[Image.Image, GenerationParameters]] = []
    for it in range(req.n_iter):
        if ctx.interrupted:
            break
        ctx.start_batch(it)
        results += _batch(ctx, plan, plan.template.seed + it * req.batch_size)
    texts = [format_infotext(p) for _, p in results]
    if req.save_images and not req.do_not_save_samples:
        for (image, p), text in zip(results, texts):
            write_output(config.outdir, image_name(p.seed), image, text)
    encoded = [b64_png(im, text) for (im, _), text in zip(results, texts)]
    grid = _grid([im for im, _ in results], req, config, plan.return_grid)
    if grid is not None:
        encoded.insert(0, b64_png(grid, texts[0]))
    info = _info(plan, ctx.model, results, texts, first=int(grid is not None))
    return dict(images=encoded if req.send_images else [], parameters=_echo(req),
                info=json.dumps(info))  # fmt: skip


def _grid(images: list[Image.Image], req: TextToImageRequest, config: ServeConfig,
          plan_grid: bool) -> Image.Image | None:  # fmt: skip
    if len(images) < 2 or req.do_not_save_grid or not plan_grid:
        return None
    w, h = images[0].size
    cols = req.batch_size if req.n_iter > 1 else math.ceil(math.sqrt(len(images)))
    try:
        check_pixels(w * cols, h * math.ceil(len(images) / cols), config.limits, "grid")
    except ValueError:
        return None  # too big to return as one image: the images alone
    return image_grid(images, cols=cols)


def _echo(req: TextToImageRequest) -> dict[str, Any]:
    """The request as A1111 echoes it: init images and mask only with include_init_images."""
    echo = req.model_dump()
    if isinstance(req, ImageToImageRequest) and not req.include_init_images:
        echo["init_images"], echo["mask"] = None, None
    return echo


def _info(plan: Generation, model: LoadedModel, results: list, texts: list[str], first: int):
    """A1111's ``Processed.js()`` fields."""
    req, t = plan.request, plan.template
    parsed = parse_infotext(texts[0]) if texts else {}
    seeds = [p.seed for _, p in results]
    n = len(results)
    return dict(
        prompt=t.prompt, all_prompts=[t.prompt] * n, negative_prompt=t.negative_prompt,
        all_negative_prompts=[t.negative_prompt] * n, seed=t.seed, all_seeds=seeds,
        subseed=req.subseed, all_subseeds=[req.subseed] * n, subseed_strength=0.0,
        width=t.width, height=t.height, sampler_name=parsed.get("Sampler", t.sampler),
        cfg_scale=t.cfg_scale, steps=t.steps, batch_size=req.batch_size, restore_faces=False,
        face_restoration_model=None, sd_model_name=model.entry.model_name,
        sd_model_hash=model.entry.short_hash, sd_vae_name=None, sd_vae_hash=None,
        seed_resize_from_w=-1, seed_resize_from_h=-1, denoising_strength=t.denoising_strength,
        extra_generation_params={"Schedule type": parsed.get("Schedule type", t.scheduler)},
        index_of_first_image=first, infotexts=texts, styles=[],
        job_timestamp=time.strftime("%Y%m%d%H%M%S"), clip_skip=1,
        is_using_inpainting_conditioning=bool(model.pipe.inpainting and plan.mode != "txt2img"),
        version=f"genmodels {__version__}",
    )  # fmt: skip
