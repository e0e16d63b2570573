"""Class-conditional sampling with classifier-free guidance from a trained denoiser."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from genmodels.diffusion.guidance import CFGDenoiser
from genmodels.diffusion.sampling import sample

__all__ = ["sample_labels"]


@torch.no_grad()
def sample_labels(
    denoiser: nn.Module,
    labels: Tensor | None,
    shape: Sequence[int],
    null: int | None,
    *,
    steps: int = 20,
    guidance_scale: float = 1.0,
    sampler: str = "dpmpp_2m",
    scheduler: str = "karras",
    seed: int = 0,
    batch_size: int = 500,
    autocast: torch.dtype | None = None,
) -> Tensor:
    """Samples (N, C, H, W) for ``labels`` (N,) (or N=shape[0] unconditional ones).

    Guidance: ``CFGDenoiser`` with the null class as uncond; sample i uses seed ``seed + i``
    whatever the chunking.
    """
    n = shape[0] if labels is None else labels.shape[0]
    device = next(denoiser.parameters()).device
    out = []
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        extra = {}
        model = denoiser
        if null is not None and labels is not None:
            extra = {"y": labels[start:stop].to(device)}
            if guidance_scale != 1.0:
                uncond = {"y": torch.full((1,), null, dtype=torch.long, device=device)}
                model = CFGDenoiser(denoiser, uncond, guidance_scale)
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=bool(autocast)):
            x = sample(
                model, (stop - start, *shape[1:]), sampler=sampler, scheduler=scheduler,
                steps=steps, seeds=list(range(seed + start, seed + stop)), extra_args=extra,
                device=device,
            )  # fmt: skip
        out.append(x.float())
    return torch.cat(out)
