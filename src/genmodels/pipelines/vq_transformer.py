"""Sampling a trained VQGAN + GPT (taming's Net2Net): codes drawn by the GPT, decoded by the
VQGAN; images larger than the training grid through a sliding window (raster order only)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from genmodels.checkpoints.runs import load_vqgan
from genmodels.models.gpt import GPT
from genmodels.models.gpt_sampling import sample, sample_sliding_window
from genmodels.models.net2net import TransformerMeta, encode_codes, make_cond_image, make_prefix
from genmodels.models.permuters import make_permuter
from genmodels.models.vqgan import VQModel

__all__ = ["load_cond_stage", "sample_images"]


def load_cond_stage(directory: str | Path, meta: TransformerMeta, vq: VQModel) -> VQModel | None:
    """The VQGAN that encodes the conditioning images (None for class / SOS models)."""
    if meta.cond_image is None:
        return None
    return vq if meta.cond_stage == "first_stage" else load_vqgan(directory, name="cond_vqgan")


@torch.no_grad()
def sample_images(
    vq: VQModel,
    gpt: GPT,
    meta: TransformerMeta,
    labels: Tensor | None,
    n: int,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    *,
    cond_images: Tensor | None = None,
    cond_vq: VQModel | None = None,
    size: int | None = None,
) -> Tensor:
    """``n`` images (n, C, H, W) in [-1, 1]; sample i uses a CPU generator seeded ``seed + i``.

    ``cond_images`` (n, C', H', W') are the images an image-conditional model's conditioning
    is made from (:func:`make_cond_image`), encoded by ``cond_vq`` (default: ``vq``). ``size``
    (px, default the training size) above the training size samples through a sliding window
    of the training grid. Tokens outside the image vocabulary are never drawn.
    """
    device = next(gpt.parameters()).device
    f, (h, w) = vq.config.downsample_factor, meta.grid
    gh, gw = vq.config.latent_shape(size) if size is not None else (h, w)
    if gh < h or gw < w:
        raise ValueError(f"size {size} is below the training size {h * f}")
    cond_codes = None
    if meta.cond_image is not None:
        if cond_images is None or len(cond_images) != n:
            raise ValueError(f"this model is image-conditional: pass {n} cond_images")
        if cond_vq is None and meta.cond_stage != "first_stage":
            raise ValueError("this model's cond stage is its own VQGAN: pass cond_vq")
        cond_vq = vq if cond_vq is None else cond_vq
        # for a larger output the conditioning image grows with it (pixels per cond code fixed)
        px = meta.cond_size * gh // h
        x = make_cond_image(cond_images.to(device), meta.cond_image, px, cond_vq.config.in_channels)
        cond_codes = encode_codes(cond_vq, x)  # (n, ch, cw)
    elif cond_images is not None:
        raise ValueError("this model is not image-conditional: cond_images do not apply")

    def mask_logits(_: int, logits: Tensor) -> None:
        logits[:, meta.n_codes :] = float("-inf")  # in place: only image codes can be drawn

    if (gh, gw) == (h, w):
        prefix = make_prefix(meta, labels, n, cond_codes).to(device)
        tokens = sample(
            gpt, prefix, h * w, seed, temperature, top_k, top_p, callback=mask_logits
        )  # (n, h*w) in the permuter's order
        permuter = make_permuter(meta.permuter, h, w).to(device)
        codes = permuter(tokens, reverse=True).reshape(n, h, w)
        return vq.decode_code(codes).clamp(-1, 1)
    if meta.permuter != "identity":
        raise ValueError(f"sliding-window sampling needs raster order, not {meta.permuter!r}")
    prefix, cond_grid = None, None
    if meta.cond_image is None:
        prefix = make_prefix(meta, labels, n).to(device)
    elif meta.cond_grid != meta.grid:
        raise ValueError(
            f"sliding-window sampling crops the condition like the codes: it needs a cond grid "
            f"{meta.cond_grid} equal to the code grid {meta.grid}"
        )
    else:
        cond_grid = cond_codes.long() + meta.cond_start  # (n, gh, gw) tokens
    sampling = (seed, temperature, top_k, top_p)
    codes = sample_sliding_window(
        gpt, (gh, gw), (h, w), prefix, cond_grid, *sampling, callback=mask_logits
    )  # (n, gh, gw)
    return vq.decode_code(codes).clamp(-1, 1)
