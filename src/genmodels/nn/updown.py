"""UNet resampling layers (ldm ``openaimodel.Upsample`` / ``Downsample``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, optionally then a 3x3 conv (parameter name ``conv``)."""

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        out_channels = out_channels or channels
        if not use_conv and out_channels != channels:
            raise ValueError("Upsample: out_channels != channels requires use_conv=True")
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor, output_size: tuple[int, int] | None = None) -> Tensor:
        """``output_size``: the (H, W) of the skip connection this output meets, for latent
        sides not divisible by the UNet's total downsampling (a stride-2 conv maps 9 -> 5, so
        5 must go back to 9, not 10). Nearest interpolation straight to that size, then the
        conv, as diffusers' ``Upsample2D(output_size=...)`` and ComfyUI's ``output_shape``."""
        if x.shape[1] != self.channels:
            raise ValueError(f"Upsample: expected {self.channels} channels, got {x.shape[1]}")
        if output_size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        else:
            x = F.interpolate(x, size=tuple(output_size), mode="nearest")  # (B, C, *output_size)
        return self.conv(x) if self.conv is not None else x


class Downsample(nn.Module):
    """2x downsampling: 3x3 conv, stride 2, padding 1, or 2x2 average pooling (name ``op``)."""

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        out_channels = out_channels or channels
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            if out_channels != channels:
                raise ValueError("Downsample: out_channels != channels requires use_conv=True")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"Downsample: expected {self.channels} channels, got {x.shape[1]}")
        return self.op(x)  # (B, C', H/2, W/2)
