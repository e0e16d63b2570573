"""The UNet residual block with timestep embedding (ldm ``openaimodel.ResBlock``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from genmodels.nn.normalization import normalization
from genmodels.nn.updown import Downsample, Upsample


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters in place (ldm zero-initialises the last layer of each branch)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the timestep embedding added (or FiLM'd) in between.

    Parameter names follow ldm: ``in_layers.{0,2}``, ``emb_layers.1``, ``out_layers.{0,3}``,
    ``skip_connection``. ``use_scale_shift_norm`` applies ``norm(h) * (1 + scale) + shift`` (the
    "AdaGN" of Dhariwal & Nichol 2021); ``up``/``down`` resample inside the block (BigGAN style).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float = 0.0,
        out_channels: int | None = None,
        use_conv: bool = False,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("ResBlock: up and down cannot both be set")
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.updown = up or down

        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, self.out_channels, 3, padding=1)
        )
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        emb_out = 2 * self.out_channels if use_scale_shift_norm else self.out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (B, C, H, W), emb: (B, emb_channels) -> (B, C_out, H', W')."""
        if self.use_checkpoint and torch.is_grad_enabled():  # as ldm: recompute in backward
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]  # (B, C_out[*2], 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        if torch.is_grad_enabled():
            return self.skip_connection(x) + h
        return h.add_(self.skip_connection(x))  # inference: h is a fresh conv output
