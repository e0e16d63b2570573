"""Exponential moving average of the weights, with the two decay warm-ups of the references.

* ``power``: k-diffusion's ``EMAWarmup`` (after @crowsonkb; Karras et al. 2022 use a related
  half-life form): decay = 1 - (1 + step / inv_gamma) ** -power, clamped to
  [min_value, max_value], the step counted from ``start_at`` (min_value before it). With
  power 2/3 the EMA covers about the last third of training; power 3/4 suits short runs.
* ``litema``: CompVis ldm ``LitEma``: decay = min(decay, (1 + n) / (10 + n)), n counting updates
  from 1.

Update (both): ema <- ema - (1 - decay) (ema - param); buffers are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .config import EMAConfig

__all__ = ["EMA", "ema_decay", "ema_update"]


def ema_decay(cfg: EMAConfig, step: int) -> float:
    """Decay for the update made after ``step`` optimiser steps have been taken before it."""
    if cfg.kind == "litema":
        n = step + 1
        return min(cfg.decay, (1 + n) / (10 + n))
    epoch = max(0, step - cfg.start_at)
    value = 1 - (1 + epoch / cfg.inv_gamma) ** -cfg.power
    return min(cfg.max_value, max(cfg.min_value, value))


@torch.no_grad()
def ema_update(model: nn.Module, averaged: nn.Module, decay: float) -> None:
    """averaged <- decay * averaged + (1 - decay) * model (parameters); buffers copied."""
    params = dict(model.named_parameters())
    pairs = [(p_avg, params[name].detach()) for name, p_avg in averaged.named_parameters()]
    same = [(a, p) for a, p in pairs if a.dtype == p.dtype and a.device == p.device]
    if same:  # one fused pass over all tensors (torch's default is a per-tensor loop)
        torch._foreach_lerp_([a for a, _ in same], [p for _, p in same], 1 - decay)
    for p_avg, p in pairs:
        if p_avg.dtype != p.dtype or p_avg.device != p.device:
            p_avg.lerp_(p.to(p_avg), 1 - decay)
    buffers = dict(model.named_buffers())
    for name, b_avg in averaged.named_buffers():
        b_avg.copy_(buffers[name])


class EMA:
    """An averaged copy of ``model`` and its update counter (``state_dict`` for resume)."""

    def __init__(self, model: nn.Module, cfg: EMAConfig) -> None:
        self.cfg = cfg
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.step = 0

    def update(self, model: nn.Module) -> float:
        decay = ema_decay(self.cfg, self.step)
        ema_update(model, self.model, decay)
        self.step += 1
        return decay

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])
