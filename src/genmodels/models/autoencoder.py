"""Encoder and Decoder of the ldm / taming convolutional autoencoder.

One implementation shared by the KL autoencoder (Rombach et al., 2022) and the VQ autoencoder
(Esser et al., 2021): parameter names and structure follow ``ldm.modules.diffusionmodules.model``
(identical to taming's), so original ``first_stage_model.*`` weights load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from genmodels.models.autoencoder_blocks import (
    ATTN_TYPES,
    Downsample,
    Normalize,
    ResnetBlock,
    Upsample,
    make_attn,
)


def _validate(ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_type: str) -> None:
    if ch <= 0 or len(ch_mult) == 0 or any(m <= 0 for m in ch_mult):
        raise ValueError(f"expected ch > 0 and non-empty positive ch_mult, got {ch}, {ch_mult}")
    if num_res_blocks < 1:
        raise ValueError(f"expected num_res_blocks >= 1, got {num_res_blocks}")
    if attn_type not in ATTN_TYPES:
        raise ValueError(f"unknown attn_type {attn_type!r}; valid: {ATTN_TYPES}")


def _run(block: nn.Module, x: Tensor, use_checkpoint: bool) -> Tensor:
    """Run ``block``; with ``use_checkpoint`` recompute it in backward instead of saving inputs."""
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False)
    return block(x)


class Encoder(nn.Module):
    """x (B, in_channels, H, W) -> (B, 2*z_channels if double_z else z_channels, H/f, W/f)."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int,
        attn_resolutions: Sequence[int] = (),
        dropout: float = 0.0,
        in_channels: int,
        resolution: int,
        z_channels: int,
        double_z: bool = True,
        attn_type: str = "vanilla",
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        _validate(ch, ch_mult, num_res_blocks, attn_type)
        self.in_channels, self.num_resolutions = in_channels, len(ch_mult)
        self.gradient_checkpointing = False
        self.downsample_factor = 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_ch_mult = (1, *ch_mult)
        curr_res = resolution
        self.down = nn.ModuleList()
        for i_level, mult in enumerate(ch_mult):
            block_in, block_out = ch * in_ch_mult[i_level], ch * mult
            down = nn.Module()
            down.block, down.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                down.block.append(ResnetBlock(block_in, block_out, dropout, num_groups))
                block_in = block_out
                if curr_res in attn_resolutions:
                    down.attn.append(make_attn(block_in, attn_type, num_groups))
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in)
                curr_res //= 2
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout, num_groups)
        self.mid.attn_1 = make_attn(block_in, attn_type, num_groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout, num_groups)
        self.norm_out = Normalize(block_in, num_groups)
        self.out_channels = 2 * z_channels if double_z else z_channels
        self.conv_out = nn.Conv2d(block_in, self.out_channels, 3, padding=1)

    def check_input(self, x: Tensor) -> None:
        f = self.downsample_factor
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(
                f"expected image of shape (B, {self.in_channels}, H, W) with H and W divisible "
                f"by {f}, got {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        ckpt = self.gradient_checkpointing
        h = self.conv_in(x)
        for i_level, down in enumerate(self.down):
            for i_block, block in enumerate(down.block):
                h = _run(block, h, ckpt)
                if len(down.attn) > 0:
                    h = _run(down.attn[i_block], h, ckpt)
            if i_level != self.num_resolutions - 1:
                h = _run(down.downsample, h, ckpt)  # (B, C, H/2, W/2)
        h = _run(self.mid.block_1, h, ckpt)
        h = _run(self.mid.attn_1, h, ckpt)
        h = _run(self.mid.block_2, h, ckpt)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """z (B, z_channels, h, w) -> (B, out_ch, h*f, w*f)."""

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int,
        attn_resolutions: Sequence[int] = (),
        dropout: float = 0.0,
        resolution: int,
        z_channels: int,
        give_pre_end: bool = False,
        tanh_out: bool = False,
        attn_type: str = "vanilla",
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        _validate(ch, ch_mult, num_res_blocks, attn_type)
        self.z_channels, self.num_resolutions = z_channels, len(ch_mult)
        self.gradient_checkpointing = False
        self.upsample_factor = 2 ** (len(ch_mult) - 1)
        self.give_pre_end, self.tanh_out = give_pre_end, tanh_out
        block_in = ch * ch_mult[-1]
        curr_res = resolution // self.upsample_factor
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout, num_groups)
        self.mid.attn_1 = make_attn(block_in, attn_type, num_groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout, num_groups)
        up_levels: list[nn.Module] = []
        for i_level in reversed(range(self.num_resolutions)):
            block_out = ch * ch_mult[i_level]
            up = nn.Module()
            up.block, up.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                up.block.append(ResnetBlock(block_in, block_out, dropout, num_groups))
                block_in = block_out
                if curr_res in attn_resolutions:
                    up.attn.append(make_attn(block_in, attn_type, num_groups))
            if i_level != 0:
                up.upsample = Upsample(block_in)
                curr_res *= 2
            up_levels.insert(0, up)  # stored low -> high index = high -> low resolution (ldm)
        self.up = nn.ModuleList(up_levels)
        self.norm_out = Normalize(block_in, num_groups)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def check_input(self, z: Tensor) -> None:
        if z.ndim != 4 or z.shape[1] != self.z_channels:
            raise ValueError(
                f"expected latent of shape (B, {self.z_channels}, h, w), got {tuple(z.shape)}"
            )

    def forward(self, z: Tensor) -> Tensor:
        self.check_input(z)
        ckpt = self.gradient_checkpointing
        h = self.conv_in(z)
        h = _run(self.mid.block_1, h, ckpt)
        h = _run(self.mid.attn_1, h, ckpt)
        h = _run(self.mid.block_2, h, ckpt)
        for i_level in reversed(range(self.num_resolutions)):
            up = self.up[i_level]
            for i_block, block in enumerate(up.block):
                h = _run(block, h, ckpt)
                if len(up.attn) > 0:
                    h = _run(up.attn[i_block], h, ckpt)
            if i_level != 0:
                h = _run(up.upsample, h, ckpt)  # (B, C, 2H, 2W)
        if self.give_pre_end:
            return h
        h = self.conv_out(F.silu(self.norm_out(h), inplace=not torch.is_grad_enabled()))
        return torch.tanh(h) if self.tanh_out else h
