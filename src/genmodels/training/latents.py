"""The frozen VAE of latent diffusion and the latent cache (Rombach et al. 2022, ldm ``ddpm.py``).

ldm's ``LatentDiffusion`` encodes every batch with its frozen ``first_stage_model`` and scales the
latents by ``scale_factor``; we do the same (``encode_images``) or, with ``latent.cache``, encode
the dataset once and train on the stored latents (``LatentDataset``), which is what makes latent
diffusion cheap on a CPU. Samples are decoded with ``AutoencoderKL.decode_latents``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from genmodels.checkpoints.atomic import write_atomic
from genmodels.configs.conditioning import LatentConfig
from genmodels.data.tensor_dataset import ImageTensorDataset
from genmodels.models.autoencoder_kl import AutoencoderKL

__all__ = ["LatentDataset", "build_latent_dataset", "encode_images"]


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
