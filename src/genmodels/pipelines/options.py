"""Checks of the optional generation settings, before anything runs (messages name the option).

* ``clip_skip`` (A1111 "Clip skip", 1 = last layer; SD 1.x only, as A1111);
* ``guidance_rescale`` (phi of Lin et al. 2023, in [0, 1]);
* ``variation_seed`` / ``variation_strength`` (A1111's variation seed, strength in [0, 1]);
* ``hires`` (a ``HiresFix``), and the refiner (``refiner_fields``);
* ``eta``: the noise of the samplers that take one (ancestral, SDE, DDIM), A1111's "Eta".
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from typing import Any

from genmodels.diffusion.guidance import cfg_cutoff_range
from genmodels.diffusion.samplers.registry import resolve_sampler
from genmodels.diffusion.schedules import resolve_scheduler
from genmodels.models.feature_cache import DeepCache
from genmodels.pipelines.hires import HiresFix
from genmodels.pipelines.latent_diffusion import LatentDiffusionPipeline
from genmodels.pipelines.seeds import check_seed

__all__ = ["check_options", "refiner_fields"]


def _number(value: object, name: str, lo: float, hi: float) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not lo <= value <= hi:  # type: ignore[arg-type]
        raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_options(
    pipe: LatentDiffusionPipeline,
    clip_skip: int = 1,
    guidance_rescale: float = 0.0,
    variation_seed: int | None = None,
    variation_strength: float = 0.0,
    hires: HiresFix | None = None,
    refiner_name: str | None = None,
    refiner_hash: str | None = None,
    refiner_switch_at: float | None = None,
    eta: float | None = None,
    cfg_cutoff: float = 0.0,
    cache_interval: int = 1,
    cache_depth: int = 1,
) -> dict[str, Any]:
    """The options as ``GenerationParameters`` fields, checked.

    Training-free accelerations, off by default: ``cfg_cutoff`` (skip the unconditional pass
    below this sigma: A1111's "NGMS"), ``cache_interval`` / ``cache_depth`` (DeepCache: a full
    UNet evaluation every ``cache_interval``-th, the others rerun ``cache_depth`` shallow blocks
    on cached deep features; ``models.feature_cache``)."""
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip < 1:
        raise ValueError(f"clip_skip must be an integer >= 1 (1 = last layer), got {clip_skip!r}")
    layers = min(e.config.text.num_hidden_layers for e in pipe.text_encoder.embedders)
    if clip_skip > layers:
        raise ValueError(f"clip_skip {clip_skip} is more than the {layers} text encoder layers")
    strength = _number(variation_strength, "variation_strength", 0.0, 1.0)
    if strength and variation_seed is None:
        raise ValueError("variation_strength > 0 needs a variation_seed")
    if variation_seed is not None:
        check_seed(variation_seed, 1, "variation_seed")
    if hires is not None:
        hires = _normalise_hires(hires)
    if eta is not None:
        eta = _number(eta, "eta", 0.0, 1e3)
    cfg_cutoff_range(cfg_cutoff)  # a finite sigma >= 0
    cache = DeepCache(cache_interval, cache_depth)  # integers >= 1
    if cache_interval > 1:
        cache.check_depth(len(pipe.unet.input_blocks))
    return dict(
        clip_skip=clip_skip,
        guidance_rescale=_number(guidance_rescale, "guidance_rescale", 0.0, 1.0),
        variation_seed=variation_seed if strength else None,
        variation_strength=strength,
        hires=hires,
        refiner_name=refiner_name, refiner_hash=refiner_hash, refiner_switch_at=refiner_switch_at,
        eta=eta,
        cfg_cutoff=float(cfg_cutoff),
        cache_interval=cache_interval,
        cache_depth=cache_depth if cache_interval > 1 else 1,
    )  # fmt: skip


def _normalise_hires(hires: object) -> HiresFix:
    """``hires`` with registry names for its sampler / scheduler (A1111 names accepted)."""
    if not isinstance(hires, HiresFix):
        raise ValueError(f"hires must be a HiresFix, got {type(hires).__name__}")
    sampler, scheduler = hires.sampler, hires.scheduler
    if sampler is not None:
        sampler, implied = resolve_sampler(sampler)
        scheduler = scheduler or implied
    if scheduler is not None:
        scheduler = resolve_scheduler(scheduler)
    return replace(hires, sampler=sampler, scheduler=scheduler)


def refiner_fields(
    pipe: LatentDiffusionPipeline, refiner: LatentDiffusionPipeline | None, switch_at: float
) -> dict[str, Any]:
    """Refiner name and switch point, after checking that ``refiner`` can take over ``pipe``'s
    latents (same latent channels and VAE factor)."""
    if refiner is None:
        return {}
    if not isinstance(refiner, LatentDiffusionPipeline):
        raise ValueError(f"refiner must be a LatentDiffusionPipeline, got {type(refiner).__name__}")
    switch_at = _number(switch_at, "refiner_switch_at", 0.0, 1.0)
    ours = (pipe.vae.config.embed_dim, pipe.vae.downsample_factor)
    theirs = (refiner.vae.config.embed_dim, refiner.vae.downsample_factor)
    if ours != theirs:
        raise ValueError(
            f"the refiner's latents ({theirs[0]} channels, factor {theirs[1]}) do not match the "
            f"model's ({ours[0]} channels, factor {ours[1]})"
        )
    if refiner.inpainting:
        raise ValueError("an inpainting model cannot be a refiner")
    source = getattr(refiner.info, "source", None)
    name = None
    if source and not source.startswith("build_pipeline("):
        name = os.path.splitext(os.path.basename(os.path.normpath(source)))[0]
    return dict(refiner_name=name or "refiner", refiner_switch_at=switch_at)
