"""Building blocks of the ldm / taming autoencoder (``ldm.modules.diffusionmodules.model``).

These differ from the UNet blocks in ``genmodels.nn``: GroupNorm eps is 1e-6, downsampling pads
asymmetrically (0, 1, 0, 1) before a stride-2 conv, there is no timestep embedding, and attention
is single-head with 1x1-conv projections. Parameter names follow the original checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from genmodels.nn.normalization import GroupNorm32

NORM_EPS = 1e-6


def Normalize(in_channels: int, num_groups: int = 32) -> GroupNorm32:
    """ldm ``Normalize``: GroupNorm(32, eps=1e-6, affine)."""
    return GroupNorm32(in_channels, num_groups=num_groups, eps=NORM_EPS)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 conv."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample(nn.Module):
    """Pad (0, 1, 0, 1) with zeros, then 3x3 conv with stride 2 (ldm / taming)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class ResnetBlock(nn.Module):
    """norm -> swish -> conv -> norm -> swish -> dropout -> conv, plus (1x1) shortcut."""

    def __init__(
        self, in_channels: int, out_channels: int, dropout: float = 0.0, num_groups: int = 32
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = Normalize(in_channels, num_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = Normalize(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        inplace = not torch.is_grad_enabled()  # inference: reuse the fresh norm / conv outputs
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=inplace)))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return h.add_(x) if inplace else x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv q/k/v/proj_out (ldm ``AttnBlock``)."""

    def __init__(self, in_channels: int, num_groups: int = 32) -> None:
        super().__init__()
        self.norm = Normalize(in_channels, num_groups)
        self.q = nn.Conv2d(in_channels, in_channels, 1)
        self.k = nn.Conv2d(in_channels, in_channels, 1)
        self.v = nn.Conv2d(in_channels, in_channels, 1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        h = self.norm(x)
        q, k, v = (rearrange(m(h), "b c h w -> b 1 (h w) c") for m in (self.q, self.k, self.v))
        if x.dtype == torch.float16:  # q.k over C=512 channels can overflow fp16 logits
            q, k, v = q.float(), k.float(), v.float()
        h = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C); scale C**-0.5 as in ldm
        h = rearrange(h.to(x.dtype), "b 1 (h w) c -> b c h w", h=H, w=W)
        h = self.proj_out(h)
        return h.add_(x) if not torch.is_grad_enabled() else x + h


ATTN_TYPES = ("vanilla", "none")


def make_attn(in_channels: int, attn_type: str = "vanilla", num_groups: int = 32) -> nn.Module:
    """ldm ``make_attn``: "vanilla" single-head attention or "none" (identity)."""
    if attn_type == "vanilla":
        return AttnBlock(in_channels, num_groups)
    if attn_type == "none":
        return nn.Identity()
    raise ValueError(f"unknown attn_type {attn_type!r}; valid: {ATTN_TYPES}")
