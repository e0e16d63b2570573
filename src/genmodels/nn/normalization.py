"""Group normalisation as used by the LDM / sgm UNet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that computes in fp32 and casts back, like ldm's ``GroupNorm32``.

    ldm (``openaimodel.normalization``) always uses 32 groups and eps 1e-5 and upcasts to fp32 so
    that fp16 activations do not overflow in the variance. We upcast fp16 only: bf16 has fp32's
    range and torch's bf16 group_norm kernels already accumulate in fp32, so the two casts per
    norm would only cost time. For fp32 inputs this is plain GroupNorm.
    """

    def __init__(self, num_channels: int, num_groups: int = 32, eps: float = 1e-5) -> None:
        if num_channels % num_groups != 0:
            raise ValueError(
                f"GroupNorm32: num_channels={num_channels} must be divisible by "
                f"num_groups={num_groups}"
            )
        super().__init__(num_groups, num_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.float16:
            return super().forward(x)
        out = F.group_norm(
            x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps
        )
        return out.to(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    """ldm's ``normalization(channels)``: 32 groups, eps 1e-5, fp32 compute."""
    return GroupNorm32(channels)
