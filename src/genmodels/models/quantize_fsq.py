"""Finite scalar quantisation (FSQ, Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE
Made Simple").

Each of the d = len(levels) channels is bounded to ``levels[i]`` values and rounded with a
straight-through estimator; the implicit codebook is the grid of prod(levels) points, with no
parameters and no codebook loss. Following the paper's appendix code:

    half_l = (L - 1) (1 + eps) / 2 ; offset = 0.5 if L is even else 0
    bound(z) = tanh(z + atanh(offset / half_l)) * half_l - offset
    z_q = round_ste(bound(z)) / (L // 2)            # values in [-1, 1]

(The paper's listing computes the shift with ``tan``; ``atanh`` is the value that makes
``bound(0) = 0`` exactly, as in later public implementations. They differ by < 1e-3.)
Indices are the mixed-radix numbers of the per-channel levels, channel 0 least significant.
The interface matches :class:`~genmodels.models.quantize.VectorQuantizer`: ``forward`` ->
``(z_q, loss=0, QuantizeInfo)`` and ``get_codebook_entry(indices, shape)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from genmodels.models.quantize import QuantizeInfo, check_code_indices, perplexity

__all__ = ["FSQuantizer"]


class FSQuantizer(nn.Module):
    """FSQ over ``len(levels)`` channels with ``levels[i]`` values each (e.g. [8, 5, 5, 5])."""

    def __init__(self, levels: Sequence[int], eps: float = 1e-3) -> None:
        super().__init__()
        levels = [int(v) for v in levels]
        if not levels or min(levels) < 2:
            raise ValueError(f"levels must be a non-empty list of ints >= 2, got {levels}")
        self.levels_list = levels
        self.e_dim = len(levels)
        self.n_e = math.prod(levels)
        self.eps = eps
        lv = torch.tensor(levels)
        basis = torch.cumprod(torch.tensor([1] + levels[:-1]), 0)
        # derived constants, rebuilt from ``levels``: kept out of the state dict
        self.register_buffer("levels", lv, persistent=False)
        self.register_buffer("basis", basis, persistent=False)

    def bound(self, z: Tensor) -> Tensor:
        """Squash channels (last dim) so that rounding gives ``levels[i]`` values."""
        lv = self.levels.to(z.dtype)
        half_l = (lv - 1) * (1 + self.eps) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def quantize(self, z: Tensor) -> Tensor:
        """Channels-last z (..., d) -> grid values in [-1, 1] with straight-through rounding."""
        b = self.bound(z)
        q = b + (torch.round(b) - b).detach()
        return q / (self.levels // 2).to(z.dtype)

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """Grid values (..., d) -> integer indices (...,)."""
        half = (self.levels // 2).to(codes.dtype)
        digits = torch.round(codes * half + half).long()
        return (digits * self.basis).sum(-1)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Integer indices (...,) -> grid values (..., d)."""
        digits = (indices.unsqueeze(-1) // self.basis) % self.levels
        half = self.levels // 2
        return (digits - half).float() / half

    def implicit_codebook(self) -> Tensor:
        """All prod(levels) codes, (n_e, d), row k = code of index k."""
        return self.indices_to_codes(torch.arange(self.n_e, device=self.levels.device))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, QuantizeInfo]:
        if z.ndim != 4 or z.shape[1] != self.e_dim:
            raise ValueError(f"expected z of shape (B, {self.e_dim}, H, W), got {tuple(z.shape)}")
        z_q = self.quantize(rearrange(z, "b c h w -> b h w c"))  # (B, H, W, d)
        indices = self.codes_to_indices(z_q.detach())  # (B, H, W)
        counts = torch.bincount(indices.reshape(-1), minlength=self.n_e)
        loss = z.new_zeros(())
        z_q = rearrange(z_q, "b h w c -> b c h w").contiguous()
        return z_q, loss, QuantizeInfo(perplexity(counts), counts, indices)

    def get_codebook_entry(self, indices: Tensor, shape: Sequence[int] | None = None) -> Tensor:
        """Codes for ``indices``: (B, d, H, W) given ``shape=(B, H, W, d)`` or (B, H, W) indices."""
        indices, shape = check_code_indices(indices, shape, self.n_e, self.e_dim)
        codes = self.indices_to_codes(indices)
        if shape is None:
            return codes
        return rearrange(codes.reshape(shape), "b h w c -> b c h w").contiguous()
