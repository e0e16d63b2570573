"""A trained diffusion run, loaded for sampling (what ``genmodels sample`` uses).

``load_run(path)`` takes a run's ``out_dir`` (its newest complete checkpoint) or one checkpoint
directory ``<out_dir>/checkpoints/step-XXXXXXXX`` (see ``checkpoint.py``) and rebuilds, from the
``config.yaml`` stored beside the weights: the UNet with the EMA weights (or the raw ones), the
objective's denoiser wrapper, the frozen VAE of a latent run and the frozen text encoder of a
text-conditional run. Nothing about the training data is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from genmodels.models.autoencoder_kl import AutoencoderKL
from genmodels.models.unet import UNetModel

from .checkpoint import latest_checkpoint
from .config import TrainConfig, load_config
from .latents import load_frozen_vae
from .objectives import build_denoiser, null_label
from .text_cond import CaptionEmbeddings, load_text_encoder

__all__ = ["TrainedRun", "load_run", "resolve_checkpoint"]


@dataclass
class TrainedRun:
    """What sampling a trained run needs; ``sample_shape`` is (C, H, W) of the UNet's space."""

    cfg: TrainConfig
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


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a run's ``out_dir`` (newest checkpoint) or itself."""
    path = Path(path)
    if (path / "model.safetensors").is_file() and (path / "config.yaml").is_file():
        return path
    if path.is_dir():
        found = latest_checkpoint(path / "checkpoints")
        if found is not None:
            return found
    raise ValueError(
        f"{path}: not a training run (no checkpoints/step-*/ with model.safetensors and "
        "config.yaml) nor a checkpoint directory"
    )


def _weights(ckpt: Path, use_ema: bool) -> tuple[str, dict[str, Tensor]]:
    """("ema" | "raw", state dict): the EMA weights when asked for and kept by the run."""
    kind = "ema" if use_ema and (ckpt / "ema.safetensors").is_file() else "raw"
    return kind, load_file(ckpt / ("ema.safetensors" if kind == "ema" else "model.safetensors"))


def _sample_shape(cfg: TrainConfig, vae: AutoencoderKL | None) -> tuple[int, int, int]:
    size = cfg.data.size
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
    cfg = load_config(ckpt / "config.yaml")
    if vae_path is not None:
        cfg = replace(cfg, latent=replace(cfg.latent, vae_path=vae_path))
    unet = UNetModel(cfg.model)
    kind, sd = _weights(ckpt, use_ema)
    try:
        unet.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{ckpt}: weights do not fit the stored model config: {exc}") from exc
    unet = unet.to(device).eval().requires_grad_(False)
    vae = load_frozen_vae(cfg.latent, device) if cfg.latent.enabled else None
    text = None
    if cfg.text.encoder is not None:
        text = CaptionEmbeddings(load_text_encoder(cfg.text).to(device))
    denoiser = build_denoiser(unet, cfg.objective).eval()
    null = null_label(cfg.model.num_classes)
    return TrainedRun(cfg, ckpt, denoiser, _sample_shape(cfg, vae), null, vae, text, kind)
