"""Multi-head (cross-)attention through ``torch.nn.functional.scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CrossAttention(nn.Module):
    """ldm ``CrossAttention``: bias-free ``to_q/to_k/to_v`` and ``to_out.0`` (Linear + Dropout).

    With ``context=None`` it is self-attention. ``upcast`` computes the attention in fp32 for
    half-precision inputs, like ldm's ``ATTN_PRECISION=fp32`` (the default in SD 2.x) and
    diffusers' ``upcast_attention``, to avoid fp16 overflow in ``q @ k^T``.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        upcast: bool = False,
    ) -> None:
        super().__init__()
        if heads < 1 or dim_head < 1:
            raise ValueError(f"CrossAttention: heads={heads} and dim_head={dim_head} must be >= 1")
        inner_dim = heads * dim_head
        self.heads, self.dim_head, self.upcast = heads, dim_head, upcast
        self.query_dim = query_dim
        self.context_dim = context_dim if context_dim is not None else query_dim
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(self.context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(self.context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x: (B, T, query_dim), context: (B, S, context_dim) or None -> (B, T, query_dim)."""
        context = x if context is None else context
        if context.shape[-1] != self.context_dim:
            raise ValueError(
                f"CrossAttention: expected context of shape (B, S, {self.context_dim}), "
                f"got {tuple(context.shape)}"
            )
        b, t, _ = x.shape
        # (B, T, heads*d) -> (B, heads, T, d)
        q = self.to_q(x).view(b, t, self.heads, self.dim_head).transpose(1, 2)
        k = self.to_k(context).view(b, -1, self.heads, self.dim_head).transpose(1, 2)
        v = self.to_v(context).view(b, -1, self.heads, self.dim_head).transpose(1, 2)
        dtype = q.dtype
        if self.upcast and dtype != torch.float32:
            q, k, v = q.float(), k.float(), v.float()
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, d), scale d^-0.5
        out = out.to(dtype).transpose(1, 2).reshape(b, t, self.heads * self.dim_head)
        return self.to_out(out)
