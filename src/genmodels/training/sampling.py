"""Conditional sampling with classifier-free guidance from a trained denoiser."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from genmodels.diffusion.guidance import CFGDenoiser
from genmodels.diffusion.sampling import sample

__all__ = ["sample_cond", "sample_labels"]


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
) -> Tensor:
    """Samples (N, C, H, W) with per-sample ``cond`` tensors (N, ...) (e.g. ``y``, ``context``).

    Guidance: ``CFGDenoiser`` with ``uncond`` (batch 1, broadcast) when ``guidance_scale != 1``;
    sample i uses seed ``seed + i`` whatever the chunking.
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
        if cond and guidance_scale != 1.0:
            model = CFGDenoiser(
                denoiser, {k: v.to(device) for k, v in uncond.items()}, guidance_scale
            )
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
