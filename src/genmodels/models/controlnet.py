"""ControlNet (Zhang et al. 2023) with the parameter names of the original ldm checkpoints.

``ControlNetModel`` is ldm's ``cldm.ControlNet``: the encoder half of the UNet it controls
(``time_embed``, ``label_emb`` for SDXL, ``input_blocks``, ``middle_block``: built by the same
``models.unet.encoder_blocks``), the hint encoder ``input_hint_block`` (control image -> latent
resolution; its output is added after the first input block) and the zero-initialised 1x1
convolutions ``zero_convs`` / ``middle_block_out`` giving one residual per skip connection and
one for the middle block. A ``control_model.*`` state dict loads with ``strict=True`` once the
prefix is stripped.

``ControlledUNet`` runs ControlNets beside a UNet (or any ``net(x, t, **cond)`` that forwards
``down_residuals`` / ``mid_residual`` to one) and adds their weighted residuals: the sum over
units of ``weight * residual`` (diffusers' ``MultiControlNetModel`` with ``guess_mode=False``;
ldm ``ControlledUnetModel``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from genmodels.configs.controlnet import ControlNetConfig
from genmodels.models.unet import (
    EmbedSequential,
    embed,
    encoder_blocks,
    label_embedding,
    time_embedding,
)
from genmodels.nn.resnet import zero_module

__all__ = ["ControlNetModel", "ControlledUNet"]


def _hint_block(config: ControlNetConfig) -> EmbedSequential:
    """ldm ``input_hint_block``: conv-SiLU stages (each after the first: a same-width conv, then
    a stride-2 conv to the next width), then a zero conv to ``model_channels``. Indices 0, 2, ...
    hold the convs, as in the checkpoints."""
    widths = config.hint_block_channels
    layers: list[nn.Module] = [nn.Conv2d(config.hint_channels, widths[0], 3, padding=1), nn.SiLU()]
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Conv2d(c_in, c_in, 3, padding=1), nn.SiLU()]
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, stride=2), nn.SiLU()]
    layers.append(zero_module(nn.Conv2d(widths[-1], config.unet.model_channels, 3, padding=1)))
    return EmbedSequential(*layers)


def _zero_conv(channels: int) -> EmbedSequential:
    return EmbedSequential(zero_module(nn.Conv2d(channels, channels, 1)))


class ControlNetModel(nn.Module):
    """``forward(x, hint, timesteps, context=None, y=None) -> (down_residuals, mid_residual)``."""

    def __init__(self, config: ControlNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config.unet
        self.time_embed = time_embedding(c)
        self.label_emb: nn.Module | None = label_embedding(c)
        self.input_hint_block = _hint_block(config)
        self.input_blocks, self.middle_block, skip_chans = encoder_blocks(c)
        self.zero_convs = nn.ModuleList(_zero_conv(ch) for ch in skip_chans)
        self.middle_block_out = _zero_conv(skip_chans[-1])

    def forward(
        self,
        x: Tensor,
        hint: Tensor,
        timesteps: Tensor | float,
        context: Tensor | None = None,
        y: Tensor | None = None,
    ) -> tuple[list[Tensor], Tensor]:
        """x: (B, in_channels, h, w) the UNet's input; hint: (B, hint_channels, h * f, w * f)
        the control image in [0, 1] (f = ``config.hint_factor``); timesteps, context, y as for
        the UNet. Returns one residual per input block (the UNet's skip connections) and the
        middle block's, in the network's dtype."""
        timesteps = self._check_inputs(x, hint, timesteps, context, y)
        c = self.config.unet
        dtype = self.time_embed[0].weight.dtype
        emb = embed(c, self.time_embed, self.label_emb, timesteps, y)
        if context is not None:
            context = context.to(dtype)
        guided_hint = self.input_hint_block(hint.to(dtype), emb, context)
        h, outs = x.to(dtype), []
        for i, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context)
            if i == 0:  # cldm: the hint joins after the first conv
                h = h + guided_hint
            outs.append(zero_conv(h, emb, context))
        h = self.middle_block(h, emb, context)
        return outs, self.middle_block_out(h, emb, context)

    def _check_inputs(
        self, x: Tensor, hint: Tensor, timesteps: Tensor | float, context: Tensor | None,
        y: Tensor | None,
    ) -> Tensor:  # fmt: skip
        c, f = self.config.unet, self.config.hint_factor
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(
                f"ControlNet: expected x of shape (B, {c.in_channels}, h, w), got {tuple(x.shape)}"
            )
        b, size = x.shape[0], (x.shape[2] * f, x.shape[3] * f)
        want = (b, self.config.hint_channels, *size)
        if hint.ndim != 4 or tuple(hint.shape) != want:
            raise ValueError(
                f"ControlNet: expected a control image of shape {want} ({f} x the latent size), "
                f"got {tuple(hint.shape)}"
            )
        timesteps = _timesteps(timesteps, x)
        if c.context_dim is not None and (
            context is None or context.ndim != 3 or context.shape[::2] != (b, c.context_dim)
        ):
            got = None if context is None else tuple(context.shape)
            raise ValueError(
                f"ControlNet: expected context of shape ({b}, S, {c.context_dim}), got {got}"
            )
        if c.num_classes == "sequential" and (
            y is None or tuple(y.shape) != (b, c.adm_in_channels)
        ):
            got = None if y is None else tuple(y.shape)
            raise ValueError(
                f"ControlNet: expected y of shape ({b}, {c.adm_in_channels}), got {got}"
            )
        return timesteps


def _timesteps(timesteps: Tensor | float, x: Tensor) -> Tensor:
    """Timesteps as a (B,) tensor on x's device (a scalar is broadcast)."""
    t = torch.as_tensor(timesteps, device=x.device)
    if t.numel() == 1:
        t = t.reshape(1).expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(
            f"ControlNet: expected timesteps of shape ({x.shape[0]},) or a scalar, "
            f"got {tuple(t.shape)}"
        )
    return t


class ControlledUNet(nn.Module):
    """``net(x, t, **cond)`` plus the control of ControlNets.

    Called as ``model(x, t, control_weights=None, **cond)``: unit i adds ``control_weights[i] *
    residual`` (all 1 when None); a weight of 0 skips its ControlNet, and with every weight 0
    ``net`` is called exactly as without control. ``hints``: one control image per ControlNet,
    (1 or B, C, H, W) in [0, 1]; a smaller batch is tiled over x's batch (cond and uncond rows
    of classifier-free guidance get the same image, as diffusers with ``guess_mode=False``).
    """

    def __init__(
        self, net: nn.Module, controlnets: Sequence[ControlNetModel], hints: Sequence[Tensor]
    ) -> None:
        super().__init__()
        if len(controlnets) != len(hints):
            raise ValueError(
                f"ControlledUNet: {len(controlnets)} ControlNets but {len(hints)} control images"
            )
        self.net = net
        self.controlnets = nn.ModuleList(controlnets)
        self.hints = list(hints)

    def forward(
        self, x: Tensor, t: Tensor, control_weights: Sequence[float] | None = None, **cond: Any
    ) -> Tensor:
        weights = [1.0] * len(self.hints) if control_weights is None else list(control_weights)
        if len(weights) != len(self.hints):
            raise ValueError(
                f"ControlledUNet: {len(weights)} control weights for {len(self.hints)} units"
            )
        down: list[Tensor] | None = None
        mid: Tensor | None = None
        for controlnet, hint, w in zip(self.controlnets, self.hints, weights):
            if w == 0:
                continue
            if hint.shape[0] != x.shape[0]:
                hint = hint.repeat(x.shape[0] // hint.shape[0], 1, 1, 1)
            y = cond.get("y") if controlnet.label_emb is not None else None
            d, m = controlnet(x, hint, t, cond.get("context"), y)
            d, m = [r * w for r in d], m * w
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        if down is None:
            return self.net(x, t, **cond)
        return self.net(x, t, down_residuals=down, mid_residual=mid, **cond)
