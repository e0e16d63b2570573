"""Spatial transformer of the LDM UNet (Rombach et al. 2022, ldm/sgm ``attention.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from genmodels.nn.attention import CrossAttention
from genmodels.nn.fast import fast_bf16_inference
from genmodels.nn.resnet import zero_module


def _format(x: Tensor) -> torch.memory_format:
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return torch.contiguous_format
    return torch.channels_last


class GEGLU(nn.Module):
    """GELU-gated linear unit (Shazeer 2020): ``a * gelu(b)`` with ``[a, b] = proj(x)``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """ldm ``FeedForward(dim, mult=4, glu=True)``: ``net = [GEGLU, Dropout, Linear]``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention and GEGLU feed-forward, each residual.

    ``disable_self_attn`` makes ``attn1`` attend to the context as well (sgm option).
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        d_head: int,
        dropout: float = 0.0,
        context_dim: int | None = None,
        disable_self_attn: bool = False,
        upcast_attention: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.disable_self_attn = disable_self_attn
        self.use_checkpoint = use_checkpoint
        self.attn1 = CrossAttention(
            dim,
            context_dim if disable_self_attn else None,
            n_heads,
            d_head,
            dropout,
            upcast_attention,
        )
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head, dropout, upcast_attention)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x: (B, T, dim), context: (B, S, context_dim) or None -> (B, T, dim)."""
        if self.use_checkpoint and torch.is_grad_enabled():  # as ldm: recompute in backward
            return checkpoint(self._forward, x, context, use_reentrant=False)
        return self._forward(x, context)

    def _forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        if torch.is_grad_enabled():
            x = self.attn1(self.norm1(x), context if self.disable_self_attn else None) + x
            x = self.attn2(self.norm2(x), context) + x
            return self.ff(self.norm3(x)) + x
        # inference: add the residual into each branch's fresh output (no new buffers)
        x = self.attn1(self.norm1(x), context if self.disable_self_attn else None).add_(x)
        x = self.attn2(self.norm2(x), context).add_(x)
        return self.ff(self.norm3(x)).add_(x)


class SpatialTransformer(nn.Module):
    """GroupNorm, ``proj_in``, ``depth`` transformer blocks on the H*W tokens, ``proj_out``, + x.

    ``use_linear`` selects Linear projections (SD 2.x, SDXL) instead of 1x1 convs (SD 1.x).
    The GroupNorm here is torch's own (eps 1e-6, no fp32 upcast), as in ldm's ``Normalize``.
    """

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        context_dim: int | None = None,
        disable_self_attn: bool = False,
        use_linear: bool = False,
        upcast_attention: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if in_channels % 32 != 0:
            raise ValueError(f"SpatialTransformer: in_channels={in_channels} must divide by 32")
        inner = n_heads * d_head
        self.in_channels, self.use_linear = in_channels, use_linear
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6)
        if use_linear:
            self.proj_in: nn.Module = nn.Linear(in_channels, inner)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner, n_heads, d_head, dropout, context_dim, disable_self_attn,
                upcast_attention, use_checkpoint,
            )
            for _ in range(depth)
        )  # fmt: skip
        proj_out = nn.Linear(inner, in_channels) if use_linear else nn.Conv2d(inner, in_channels, 1)
        self.proj_out = zero_module(proj_out)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W), context: (B, S, context_dim) or None -> (B, C, H, W)."""
        if not self.use_linear and self._tokens_fast_path(x):
            return self._forward_tokens(x, context)
        h, w = x.shape[-2:]
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = rearrange(x, "b c h w -> b (h w) c")
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear:
            x = self.proj_out(x)
        # Back to the input's memory format: a channels-last view here would otherwise propagate
        # and make every later conv reorder its (contiguous) weight on each call.
        x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w).contiguous(memory_format=_format(x_in))
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in

    def _tokens_fast_path(self, x: Tensor) -> bool:
        # A channels-last (B, C, H, W) tensor is a (B, H*W, C) token matrix in memory, so the 1x1
        # convs are plain matmuls on it (the same sums): about 2x faster than oneDNN's 1x1 conv.
        return x.dim() == 4 and fast_bf16_inference(x, self.proj_in.weight)

    def _forward_tokens(self, x: Tensor, context: Tensor | None) -> Tensor:
        h, w = x.shape[-2:]
        w_in, w_out = self.proj_in.weight, self.proj_out.weight  # (out, in, 1, 1)
        tokens = rearrange(self.norm(x), "b c h w -> b (h w) c")  # a view for channels-last
        tokens = F.linear(tokens, w_in.flatten(1), self.proj_in.bias)  # (B, H*W, inner)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        tokens = F.linear(tokens, w_out.flatten(1), self.proj_out.bias)  # (B, H*W, C)
        out = rearrange(tokens, "b (h w) c -> b c h w", h=h, w=w)  # channels-last view
        return out.add_(x)
