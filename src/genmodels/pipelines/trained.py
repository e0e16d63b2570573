"""A diffusion run trained with ``genmodels train``, loaded and sampled (``genmodels sample``).

``load_run(path)`` takes a run's ``out_dir`` (its newest complete checkpoint) or one checkpoint
directory ``<out_dir>/checkpoints/step-XXXXXXXX`` (``checkpoints/runs.py``) and rebuilds, from
the ``config.yaml`` stored beside the weights: the UNet with the EMA weights (or the raw ones),
the objective's denoiser wrapper, the frozen VAE of a latent run and the frozen text encoder of
a text-conditional run. Only the config sections that describe the model are read (``model``,
``objective``, ``latent``, ``text``, ``data.size``), so runs written by older and newer
versions load alike. ``sample_cond`` / ``sample_labels`` draw guided samples from a denoiser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from genmodels.checkpoints.runs import read_run_config, resolve_checkpoint
from genmodels.checkpoints.strict import load_strict
from genmodels.checkpoints.vae import load_frozen_vae
from genmodels.configs.conditioning import LatentConfig, TextConfig
from genmodels.configs.io import config_from_dict
from genmodels.configs.unet import UNetConfig
from genmodels.diffusion.denoisers import with_model
from genmodels.diffusion.guidance import CFGDenoiser, cfg_cutoff_range
from genmodels.diffusion.objectives import ObjectiveConfig, build_denoiser, null_label
from genmodels.diffusion.sampling import sample
from genmodels.models.autoencoder_kl import AutoencoderKL
from genmodels.models.feature_cache import CachedModel, DeepCache
from genmodels.models.text.captions import CaptionEmbeddings, load_text_encoder
from genmodels.models.unet import UNetModel

__all__ = ["RunModel", "TrainedRun", "load_run", "read_run_model", "sample_cond", "sample_labels"]


@dataclass
class RunModel:
    """The parts of a diffusion run's config that describe its model."""

    model: UNetConfig
    objective: ObjectiveConfig
    latent: LatentConfig
    text: TextConfig
    size: int  # data.size: the image side in pixels
    sample_steps: int = 20  # the run's sampling defaults (its sample grids')
    guidance_scale: float = 1.0


def read_run_model(config_file: str | Path) -> RunModel:
    """The model sections of a diffusion run's ``config.yaml`` (checked like the training
    config; other sections are not read)."""
    data = read_run_config(config_file)
    if data["task"] != "diffusion":
        raise ValueError(f"{config_file}: a {data['task']!r} run, not a diffusion run")

    def section(name: str, cls: type) -> Any:
        return config_from_dict(cls, data.get(name) or {}, name)

    try:
        size = int((data.get("data") or {}).get("size", 16))
        return RunModel(section("model", UNetConfig), section("objective", ObjectiveConfig),
                        section("latent", LatentConfig), section("text", TextConfig), size,
                        int(data.get("sample_steps", 20)),
                        float(data.get("guidance_scale", 1.0)))  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{config_file}: {exc}") from None


@dataclass
class TrainedRun:
    """What sampling a trained run needs; ``sample_shape`` is (C, H, W) of the UNet's space."""

    cfg: RunModel
    checkpoint: Path
    denoiser: nn.Module
    sample_shape: tuple[int, int, int]
    null: int | None  # the CFG null class of a class-conditional run
    vae: AutoencoderKL | None
    text: CaptionEmbeddings | None
    weights: str = "ema"  # which weights the UNet holds: "ema" or "raw"

    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        """Samples of the UNet's space -> images in [-1, 1] (through the VAE when latent)."""
        if self.vae is None:
            return x.float().clamp(-1, 1)
        return self.vae.decode_latents(x).float().clamp(-1, 1)


def _weights(ckpt: Path, use_ema: bool) -> tuple[str, Path]:
    """("ema" | "raw", file): the EMA weights when asked for and kept by the run."""
    kind = "ema" if use_ema and (ckpt / "ema.safetensors").is_file() else "raw"
    return kind, ckpt / ("ema.safetensors" if kind == "ema" else "model.safetensors")


def _sample_shape(cfg: RunModel, vae: AutoencoderKL | None) -> tuple[int, int, int]:
    size = cfg.size
    if vae is None:
        return (cfg.model.in_channels, size, size)
    f = vae.downsample_factor
    if size % f:
        raise ValueError(f"data.size={size} is not divisible by the VAE's factor {f}")
    return (cfg.model.in_channels, size // f, size // f)


def load_run(
    path: str | Path,
    use_ema: bool = True,
    device: torch.device | str = "cpu",
    vae_path: str | None = None,
) -> TrainedRun:
    """Load a trained run for sampling (``path``: out_dir or checkpoint dir). ``use_ema``: the
    EMA weights if the run kept them (else the raw ones); ``vae_path`` replaces the run's
    ``latent.vae_path``, e.g. when the run was moved."""
    ckpt = resolve_checkpoint(path)
    cfg = read_run_model(ckpt / "config.yaml")
    if vae_path is not None:
        cfg = replace(cfg, latent=replace(cfg.latent, vae_path=vae_path))
    unet = UNetModel(cfg.model)
    kind, file = _weights(ckpt, use_ema)
    try:
        load_strict(unet, load_file(file), "the UNet weights")
    except ValueError as exc:
        raise ValueError(f"{file}: weights do not fit the stored model config: {exc}") from None
    unet = unet.to(device).eval().requires_grad_(False)
    vae = load_frozen_vae(cfg.latent, device) if cfg.latent.enabled else None
    text = None
    if cfg.text.encoder is not None:
        text = CaptionEmbeddings(load_text_encoder(cfg.text).to(device))
    denoiser = build_denoiser(unet, cfg.objective).eval()
    null = null_label(cfg.model.num_classes)
    return TrainedRun(cfg, ckpt, denoiser, _sample_shape(cfg, vae), null, vae, text, kind)


@torch.no_grad()
def sample_cond(
    denoiser: nn.Module,
    shape: Sequence[int],
    cond: Mapping[str, Tensor] | None = None,
    uncond: Mapping[str, Tensor] | None = None,
    *,
    steps: int = 20,
    guidance_scale: float = 1.0,
    sampler: str = "dpmpp_2m",
    scheduler: str = "karras",
    seed: int = 0,
    batch_size: int = 500,
    autocast: torch.dtype | None = None,
    cfg_cutoff: float = 0.0,
    cache: DeepCache | None = None,
) -> Tensor:
    """Samples (N, C, H, W) with per-sample ``cond`` tensors (N, ...) (e.g. ``y``, ``context``).

    Guidance: ``CFGDenoiser`` with ``uncond`` (batch 1, broadcast) when ``guidance_scale != 1``;
    below sigma ``cfg_cutoff`` the unconditional pass is skipped (A1111's "negative guidance
    minimum sigma"). ``cache``: DeepCache feature caching in the UNet (reset for each chunk;
    its counters add up over the chunks). Sample i uses seed ``seed + i`` whatever the chunking.
    """
    n = shape[0]
    cond = dict(cond or {})
    for key, value in cond.items():
        if value.shape[0] != n:
            raise ValueError(f"cond[{key!r}] has {value.shape[0]} rows, expected {n} (shape[0])")
    if guidance_scale != 1.0 and cond and uncond is None:
        raise ValueError("guidance_scale != 1 needs an uncond (the null label / empty prompt)")
    device = next(denoiser.parameters()).device
    out = []
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        extra = {k: v[start:stop].to(device) for k, v in cond.items()}
        model = denoiser
        if cache is not None:
            cache.reset()
            model = with_model(denoiser, CachedModel(denoiser.model, cache))
        if cond and guidance_scale != 1.0:
            model = CFGDenoiser(
                model, {k: v.to(device) for k, v in uncond.items()}, guidance_scale,
                sigma_range=cfg_cutoff_range(cfg_cutoff),
            )  # fmt: skip
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=bool(autocast)):
            x = sample(
                model, (stop - start, *shape[1:]), sampler=sampler, scheduler=scheduler,
                steps=steps, seeds=list(range(seed + start, seed + stop)), extra_args=extra,
                device=device,
            )  # fmt: skip
        out.append(x.float())
    return torch.cat(out)


def sample_labels(
    denoiser: nn.Module,
    labels: Tensor | None,
    shape: Sequence[int],
    null: int | None,
    **options: object,
) -> Tensor:
    """Samples (N, C, H, W) for ``labels`` (N,) (or N=shape[0] unconditional ones).

    The null class is the CFG uncond; ``options`` as ``sample_cond`` (steps, guidance_scale,
    sampler, scheduler, seed, batch_size, autocast).
    """
    n = shape[0] if labels is None else labels.shape[0]
    if null is None or labels is None:
        return sample_cond(denoiser, (n, *shape[1:]), **options)
    uncond = {"y": torch.full((1,), null, dtype=torch.long)}
    return sample_cond(denoiser, (n, *shape[1:]), {"y": labels}, uncond, **options)
