"""Learning-rate schedules as multipliers of the base LR, ``f(step) -> float``.

* ``constant``: 1 after an optional linear warm-up.
* ``cosine``: linear warm-up from 0, then half a cosine from 1 down to ``min_lr_ratio`` at the
  last step (Loshchilov & Hutter 2017, SGDR without restarts).
* ``lambda_linear``: CompVis ldm ``LambdaLinearScheduler`` with one cycle: linear from f_start
  to f_max over ``warmup_steps``, then linear from f_max towards f_min over ``cycle_length``
  (SD's configs: f_start=1e-6, f_max=f_min=1, warm-up 10000, i.e. constant after warm-up).
  f(n) = f_start + (f_max - f_start) n / warm for n < warm, else
  f_min + (f_max - f_min) (cycle_length - n) / cycle_length; the cycle must cover the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .config import OptimConfig

__all__ = ["lr_lambda", "make_scheduler"]


def lr_lambda(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """The LR multiplier at optimiser step ``n`` (0-based) for ``cfg.schedule``."""
    warm = cfg.warmup_steps
    if warm < 0:
        raise ValueError(f"optim.warmup_steps must be >= 0, got {warm}")
    if cfg.schedule == "constant":
        return lambda n: min(1.0, (n + 1) / warm) if warm else 1.0
    if cfg.schedule == "cosine":
        floor = cfg.min_lr_ratio
        decay_steps = max(1, total_steps - warm)

        def cosine(n: int) -> float:
            if n < warm:
                return (n + 1) / warm
            progress = min(1.0, (n - warm) / decay_steps)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return cosine
    if cfg.schedule == "lambda_linear":
        if cfg.cycle_length <= 0:
            raise ValueError("optim.cycle_length must be positive")
        if cfg.cycle_length < total_steps:  # ldm's scheduler has no value past its cycles
            raise ValueError(
                f"optim.cycle_length={cfg.cycle_length} is shorter than the run ({total_steps} "
                "steps); LambdaLinear would extrapolate below f_min"
            )

        def lambda_linear(n: int) -> float:
            if n < warm:
                return (cfg.f_max - cfg.f_start) / warm * n + cfg.f_start
            return cfg.f_min + (cfg.f_max - cfg.f_min) * (cfg.cycle_length - n) / cfg.cycle_length

        return lambda_linear
    raise ValueError(
        f"unknown optim.schedule {cfg.schedule!r}; valid: constant, cosine, lambda_linear"
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepping once per optimiser step (state_dict for resume)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
