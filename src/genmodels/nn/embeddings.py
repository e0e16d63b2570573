"""Sinusoidal timestep embeddings (Vaswani et al. 2017, as used by DDPM / LDM)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """ldm's ``timestep_embedding``: ``[cos(t f), sin(t f)]``, ``f_i = max_period^(-i/half)``.

    ``timesteps``: (B,), may be fractional. Returns (B, dim) float32; odd ``dim`` is zero-padded.
    """
    if timesteps.ndim != 1:
        raise ValueError(
            f"timestep_embedding: expected timesteps of shape (B,), got {tuple(timesteps.shape)}"
        )
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, dtype=torch.float32, device=timesteps.device)
        / half
    )
    args = timesteps[:, None].float() * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
