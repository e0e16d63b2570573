"""The KL autoencoder file of a genmodels run (``vae.safetensors``), read and written in one
place: ``save_vae`` stores the weights (ldm key names) with the ``AutoencoderConfig`` as JSON
metadata; ``load_vae`` reads it back, or takes the ``first_stage_model.*`` weights of an ldm /
SD checkpoint on a named preset.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from genmodels.configs.autoencoder import AutoencoderConfig, get_autoencoder_config
from genmodels.configs.conditioning import LatentConfig
from genmodels.models.autoencoder_kl import AutoencoderKL

from .atomic import write_atomic
from .io import load_state_dict, read_metadata
from .strict import load_strict

__all__ = ["VAE_FILE", "load_frozen_vae", "load_vae", "save_vae"]

_LDM_PREFIX = "first_stage_model."
VAE_FILE = "vae.safetensors"  # the autoencoder in the out_dir of a ``task: autoencoder`` run
_META = "autoencoder_config"


def save_vae(path: str | Path, model: AutoencoderKL) -> Path:
    """Weights (ldm key names) as safetensors with the config as JSON metadata, atomically."""
    meta = {_META: json.dumps(model.config.to_dict())}
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda tmp: save_file(sd, str(tmp), metadata=meta))


def load_vae(
    path: str | Path, preset: str = "tiny", scale_factor: float | None = None
) -> AutoencoderKL:
    """``AutoencoderKL`` from ``path``, frozen, in eval mode.

    ``path`` is a file, or a directory holding ``vae.safetensors`` (a ``task: autoencoder``
    run's ``out_dir``). The config is the one stored in the file by :func:`save_vae`, else
    ``preset``; ``scale_factor`` replaces its latent scale. An ldm / SD checkpoint is accepted:
    its ``first_stage_model.*`` keys are taken (prefix stripped) and loaded strictly.
    """
    path = Path(path)
    if path.is_dir():
        path = path / VAE_FILE
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist (train one with `genmodels train --preset "
            "autoencoder-digits` or `task: autoencoder`)"
        )
    overrides = {} if scale_factor is None else {"scale_factor": scale_factor}
    meta = read_metadata(path)
    if _META in meta:  # written by save_vae: its own config
        try:
            config = AutoencoderConfig(**json.loads(meta[_META]))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: bad {_META} metadata: {exc}") from None
        vae = AutoencoderKL(replace(config, **overrides))
        what = "its stored autoencoder config"
    else:
        vae = AutoencoderKL(get_autoencoder_config(preset, **overrides))
        what = f"the vae preset {preset!r}"
    sd = load_state_dict(path)
    if any(k.startswith(_LDM_PREFIX) for k in sd):
        sd = {k[len(_LDM_PREFIX) :]: v for k, v in sd.items() if k.startswith(_LDM_PREFIX)}
    try:
        load_strict(vae, sd, f"{path} (for {what})")
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    return vae.eval().requires_grad_(False)


def load_frozen_vae(cfg: LatentConfig, device: torch.device | str = "cpu") -> AutoencoderKL:
    """The frozen VAE of a latent-diffusion config (``latent.vae_path`` on ``vae_preset``)."""
    if cfg.vae_path is None:
        raise ValueError("latent.enabled needs latent.vae_path (a trained AutoencoderKL)")
    try:
        vae = load_vae(cfg.vae_path, cfg.vae_preset, cfg.vae_scale_factor)
    except ValueError as exc:
        raise ValueError(f"latent.vae_path: {exc}") from None
    return vae.to(device)
