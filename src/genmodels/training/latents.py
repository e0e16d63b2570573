"""The frozen VAE of latent diffusion and the latent cache (Rombach et al. 2022, ldm ``ddpm.py``).

ldm's ``LatentDiffusion`` encodes every batch with its frozen ``first_stage_model`` and scales the
latents by ``scale_factor``; we do the same (``encode_images``) or, with ``latent.cache``, encode
the dataset once and train on the stored latents (``LatentDataset``), which is what makes latent
diffusion cheap on a CPU. Samples are decoded with ``AutoencoderKL.decode_latents``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from genmodels.checkpoints.atomic import write_atomic
from genmodels.checkpoints.io import load_state_dict, read_metadata
from genmodels.configs.autoencoder import AutoencoderConfig, get_autoencoder_config
from genmodels.data.tensor_dataset import ImageTensorDataset
from genmodels.models.autoencoder_kl import AutoencoderKL

from .config import LatentConfig

__all__ = ["VAE_FILE", "LatentDataset", "build_latent_dataset", "encode_images", "load_frozen_vae"]

_LDM_PREFIX = "first_stage_model."
VAE_FILE = "vae.safetensors"  # the autoencoder in a directory given as latent.vae_path


def load_frozen_vae(cfg: LatentConfig, device: torch.device | str = "cpu") -> AutoencoderKL:
    """``AutoencoderKL`` with the weights of ``cfg.vae_path``, frozen.

    ``vae_path`` is a file, or a directory holding ``vae.safetensors`` (what ``genmodels train``
    with ``task: autoencoder`` writes to its ``out_dir``). Its config: the one stored in the file
    by ``save_autoencoder_kl``, else ``cfg.vae_preset``.

    An ldm / SD checkpoint is accepted: its ``first_stage_model.*`` keys are taken (prefix
    stripped) and loaded with ``strict=True``.
    """
    if cfg.vae_path is None:
        raise ValueError("latent.enabled needs latent.vae_path (a trained AutoencoderKL)")
    path = Path(cfg.vae_path)
    if path.is_dir():  # the out_dir of ``genmodels train`` with ``task: autoencoder``
        path = path / VAE_FILE
    if not path.is_file():
        raise ValueError(
            f"latent.vae_path: {path} does not exist (train one with `genmodels train "
            "--preset autoencoder-digits` or `task: autoencoder`)"
        )
    overrides = {} if cfg.vae_scale_factor is None else {"scale_factor": cfg.vae_scale_factor}
    meta = read_metadata(path)
    if "autoencoder_config" in meta:  # written by save_autoencoder_kl: its own config
        config = AutoencoderConfig(**json.loads(meta["autoencoder_config"]))
        vae = AutoencoderKL(replace(config, **overrides))
    else:
        vae = AutoencoderKL(get_autoencoder_config(cfg.vae_preset, **overrides))
    sd = load_state_dict(path)
    if any(k.startswith(_LDM_PREFIX) for k in sd):
        sd = {k[len(_LDM_PREFIX) :]: v for k, v in sd.items() if k.startswith(_LDM_PREFIX)}
    try:
        vae.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"{path}: does not fit latent.vae_preset={cfg.vae_preset!r}: {exc}"
        ) from exc
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode_images(
    vae: AutoencoderKL,
    images: Tensor,
    sample: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Images (B, C, H, W) in [-1, 1] -> scaled latents (B, embed_dim, H/f, W/f), fp32.

    ``sample=False`` takes the posterior mode (deterministic); otherwise z ~ q(z|x) as ldm.
    """
    device = next(vae.parameters()).device
    posterior = vae.encode(images.to(device), tiled=False)
    z = posterior.sample(generator) if sample else posterior.mode()
    c = vae.config
    return (c.scale_factor * (z - c.shift_factor)).float()


class LatentDataset(ImageTensorDataset):
    """Cached latents (N, embed_dim, h, w) with the labels / captions of the source images."""


def _encode_all(
    vae: AutoencoderKL,
    dataset: Any,
    cfg: LatentConfig,
    seed: int,
    progress: Callable[[int, int], None] | None,
) -> Tensor:
    n = len(dataset)
    gen = torch.Generator().manual_seed(seed) if cfg.sample_posterior else None
    out = []
    for start in range(0, n, cfg.encode_batch_size):
        idx = torch.arange(start, min(n, start + cfg.encode_batch_size))
        if hasattr(dataset, "batch"):
            x = dataset.batch(idx)[0]
        else:  # decoded per item; no augmentation key -> the un-augmented image
            x = torch.stack([dataset[int(i)][0] for i in idx])
        z = encode_images(vae, x, cfg.sample_posterior, gen)
        out.append(z.cpu())
        if progress is not None:
            progress(int(idx[-1]) + 1, n)
    return torch.cat(out)  # (N, embed_dim, h, w)


def _labels(dataset: Any) -> Tensor | None:
    labels = getattr(dataset, "labels", None)
    if labels is None:
        return None
    return labels if isinstance(labels, Tensor) else torch.as_tensor(labels, dtype=torch.long)


def _save_atomic(path: Path, latents: Tensor, labels: Tensor | None, meta: dict[str, str]) -> None:
    """Temp file + rename: a reader never sees a half-written cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"latents": latents.contiguous()}
    if labels is not None:
        tensors["labels"] = labels.contiguous()
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _cache_meta(vae: AutoencoderKL, dataset: Any, cfg: LatentConfig) -> dict[str, str]:
    c = vae.config
    return {
        "n": str(len(dataset)),
        "scale_factor": repr(c.scale_factor),
        "shift_factor": repr(c.shift_factor),
        "embed_dim": str(c.embed_dim),
        "sample_posterior": str(cfg.sample_posterior),
    }


def build_latent_dataset(
    vae: AutoencoderKL,
    dataset: Any,
    cfg: LatentConfig,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> LatentDataset:
    """Encode ``dataset`` once (or read ``cfg.cache_path`` if it matches) -> ``LatentDataset``.

    The cache stores the latents, labels and a fingerprint (dataset size, VAE scale / shift /
    latent channels, posterior mode or sample); a cache with another fingerprint is an error
    naming the file rather than silently training on stale latents.
    """
    meta = _cache_meta(vae, dataset, cfg)
    path = Path(cfg.cache_path) if cfg.cache_path is not None else None
    captions: Sequence[str] | None = getattr(dataset, "captions", None)
    if path is not None and path.exists():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            stored = f.metadata() or {}
        if stored != meta:
            raise ValueError(
                f"latent cache {path} was written for {stored}, this run needs {meta}; "
                "delete it or set latent.cache_path elsewhere"
            )
        tensors = load_file(str(path))
        return LatentDataset(
            tensors["latents"], tensors.get("labels"), getattr(dataset, "class_names", None),
            list(captions) if captions is not None else None,
        )  # fmt: skip
    latents = _encode_all(vae, dataset, cfg, seed, progress)
    labels = _labels(dataset)
    if path is not None:
        _save_atomic(path, latents, labels, meta)
    return LatentDataset(
        latents, labels, getattr(dataset, "class_names", None),
        list(captions) if captions is not None else None,
    )  # fmt: skip
