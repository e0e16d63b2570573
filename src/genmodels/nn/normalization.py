"""Group normalisation as used by the LDM / sgm UNet and the ldm / taming autoencoder."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (norm, input) -> per-(sample, group) (mean, var) to normalise with, or None for the input's own
NormStatsHook = Callable[["GroupNorm32", Tensor], "tuple[Tensor, Tensor] | None"]


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that computes fp16 inputs in fp32, like ldm's ``GroupNorm32``, and can take its
    statistics from outside.

    ldm (``openaimodel.normalization``) upcasts to fp32 so that fp16 activations do not overflow
    in the variance. We upcast fp16 only: bf16 has fp32's range and torch's bf16 group_norm
    kernels already accumulate in fp32, so the two casts per norm would only cost time. For fp32
    inputs this is plain GroupNorm. The UNet uses 32 groups and eps 1e-5 (``normalization``), the
    autoencoder eps 1e-6 (``autoencoder_blocks.Normalize``).

    ``stats_hook`` (set by ``genmodels.models.tiling``) sees each input and may return
    per-(sample, group) ``(mean, var)`` to normalise with instead of the input's own, so that
    image tiles share whole-image statistics (the A1111 multidiffusion tiled-VAE "GroupNorm
    sync" idea).

    Channels come first (unlike ``nn.GroupNorm``); ``num_groups`` and ``eps`` are keyword-only so
    that torch's ``(num_groups, num_channels)`` order cannot be passed by mistake.
    """

    def __init__(self, num_channels: int, *, num_groups: int = 32, eps: float = 1e-5) -> None:
        if num_channels % num_groups != 0:
            raise ValueError(
                f"GroupNorm32: num_channels={num_channels} must be divisible by "
                f"num_groups={num_groups}"
            )
        super().__init__(num_groups, num_channels, eps=eps, affine=True)
        self.stats_hook: NormStatsHook | None = None

    def forward(self, x: Tensor) -> Tensor:
        stats = self.stats_hook(self, x) if self.stats_hook is not None else None
        if stats is not None:
            return self._normalize_with(x, *stats)
        if x.dtype == torch.float16:
            w, b = self.weight.float(), self.bias.float()
            return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def _normalize_with(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        B, C = x.shape[:2]
        if mean.shape != (B, self.num_groups) or var.shape != mean.shape:
            raise ValueError(
                f"expected stats of shape ({B}, {self.num_groups}), got {tuple(mean.shape)}"
            )
        # fold the statistics into a per-(sample, channel) affine map: y = a * x + b
        rep = C // self.num_groups
        a = torch.rsqrt(var.float() + self.eps).repeat_interleave(rep, 1) * self.weight.float()
        b = self.bias.float() - mean.float().repeat_interleave(rep, 1) * a  # (B, C)
        dtype = torch.float32 if x.dtype == torch.float16 else x.dtype
        a, b = a.to(dtype)[..., None, None], b.to(dtype)[..., None, None]
        return torch.addcmul(b, x.to(dtype), a).to(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    """ldm's ``normalization(channels)``: 32 groups, eps 1e-5, fp32 compute."""
    return GroupNorm32(channels)
