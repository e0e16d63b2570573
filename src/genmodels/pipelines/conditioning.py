"""Prompts -> the keyword arguments the UNet denoiser is called with (``context``, SDXL ``y``).

Prompt weighting follows A1111 (``prompt_weighting``): every embedder tokenizes the prompt
fragment by fragment, encodes 77-token chunks, scales the hidden states by the token weights and
restores their mean. All prompts of one call (positive and negative) are padded to the same
number of chunks with empty chunks, as A1111 pads conditionings for CFG.

SDXL's vector conditioning (Podell et al. 2023, Sec. 2.2; sgm ``ConcatTimestepEmbedderND``):
``y = cat([pooled, emb(original_size), emb(crop_coords_top_left), emb(target_size)])`` for the
base model and ``... emb(aesthetic_score)`` instead of the target size for the refiner, each
number embedded with a 256-dim sinusoidal ``timestep_embedding``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from genmodels.models.family import ModelFamily
from genmodels.models.text.encoders import TextEncoder
from genmodels.nn.embeddings import timestep_embedding
from genmodels.pipelines.prompt_weighting import apply_weights, weighted_chunks, wrap_weights

__all__ = ["SDXLSizeConditioning", "encode_prompts", "sdxl_vector", "text_conditioning"]

SIZE_EMBED_DIM = 256  # sgm: ConcatTimestepEmbedderND(outdim=256)


@dataclass
class SDXLSizeConditioning:
    """SDXL micro-conditioning (sizes as (height, width) in pixels)."""

    original_size: tuple[int, int]
    crop_coords_top_left: tuple[int, int] = (0, 0)
    target_size: tuple[int, int] | None = None  # None: the generated size
    aesthetic_score: float = 6.0  # refiner only
    negative_aesthetic_score: float = 2.5  # refiner only, for the unconditional branch


def _check_prompts(prompts: object, what: str) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    if (
        not isinstance(prompts, Sequence)
        or not prompts
        or not all(isinstance(p, str) for p in prompts)
    ):
        raise ValueError(f"{what} must be a str or a non-empty list of str, got {prompts!r:.80}")
    return list(prompts)


@torch.no_grad()
def encode_prompts(
    encoder: TextEncoder, prompts: str | Sequence[str]
) -> tuple[Tensor, Tensor | None]:
    """Weighted prompts -> (context (B, 77 * n_chunks, D), pooled (B, P) or None)."""
    prompts = _check_prompts(prompts, "prompt")
    backtrack = encoder.config.comma_backtrack
    per_emb = [
        [weighted_chunks(e.tokenizer, p, backtrack) for p in prompts] for e in encoder.embedders
    ]
    n = max(len(chunks) for batch in per_emb for chunks in batch)
    device = next(encoder.parameters()).device
    contexts, pooled = [], None
    for emb, batch in zip(encoder.embedders, per_emb):
        tok = emb.tokenizer
        padded = [chunks + [([], [])] * (n - len(chunks)) for chunks in batch]
        ids = torch.tensor([[tok.wrap(c) for c, _ in row] for row in padded], device=device)
        mult = torch.tensor(
            [[wrap_weights(w, tok.context_length) for _, w in row] for row in padded]
        )
        b, _, t = ids.shape
        hidden, proj = emb.encode_tokens(ids.reshape(b * n, t))  # (B*n, T, D)
        hidden = apply_weights(hidden, mult.reshape(b * n, t))
        contexts.append(hidden.reshape(b, n * t, hidden.shape[-1]))
        if proj is not None:
            pooled = proj.reshape(b, n, -1)[:, 0]  # first chunk, as A1111 / ComfyUI
    return torch.cat(contexts, dim=-1), pooled


def sdxl_vector(
    pooled: Tensor, model_type: ModelFamily, size: SDXLSizeConditioning, target: tuple[int, int],
    negative: bool = False,
) -> Tensor:  # fmt: skip
    """SDXL ``y`` (B, P + 256 * n_ids) for pooled (B, P) and the size conditioning."""
    if model_type == "sdxl-refiner":
        score = size.negative_aesthetic_score if negative else size.aesthetic_score
        ids = [*size.original_size, *size.crop_coords_top_left, score]
    elif model_type == "sdxl-base":
        ids = [*size.original_size, *size.crop_coords_top_left, *(size.target_size or target)]
    else:
        raise ValueError(f"size conditioning needs an SDXL model, got model_type={model_type!r}")
    b = pooled.shape[0]
    time_ids = torch.tensor([float(v) for v in ids]).repeat(b)  # (B * n_ids,)
    emb = timestep_embedding(time_ids, SIZE_EMBED_DIM).reshape(b, -1)
    return torch.cat([pooled, emb.to(device=pooled.device, dtype=pooled.dtype)], dim=-1)


def text_conditioning(
    encoder: TextEncoder,
    model_type: ModelFamily,
    prompts: Sequence[str],
    negative_prompts: Sequence[str],
    size: tuple[int, int],
    sdxl: SDXLSizeConditioning | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(cond, uncond) keyword dicts for the denoiser; ``size`` = generated (height, width)."""
    prompts = _check_prompts(prompts, "prompt")
    negative_prompts = _check_prompts(negative_prompts, "negative_prompt")
    if len(prompts) != len(negative_prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(negative_prompts)} negative prompts")
    context, pooled = encode_prompts(encoder, [*prompts, *negative_prompts])
    b = len(prompts)
    cond, uncond = {"context": context[:b]}, {"context": context[b:]}
    if model_type.startswith("sdxl"):
        if pooled is None:
            raise ValueError("an SDXL model needs a text encoder with a pooled output")
        sdxl = sdxl or SDXLSizeConditioning(original_size=size)
        cond["y"] = sdxl_vector(pooled[:b], model_type, sdxl, size)
        uncond["y"] = sdxl_vector(pooled[b:], model_type, sdxl, size, negative=True)
    return cond, uncond
