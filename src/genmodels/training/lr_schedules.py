"""Learning-rate schedules as multipliers of the base LR, ``f(step) -> float``.

* ``constant``: 1 after an optional linear warm-up.
* ``cosine``: linear warm-up from 0, then half a cosine from 1 down to ``min_lr_ratio`` at the
  last step (Loshchilov & Hutter 2017, SGDR without restarts).
* ``lambda_linear``: CompVis ldm ``LambdaLinearScheduler``: per cycle, linear from f_start
  to f_max over its warm-up, then linear from f_max towards f_min over its length (SD's
  configs: one cycle, f_start=1e-6, f_max=f_min=1, warm-up 10000, i.e. constant after warm-up).
  Within a cycle at step m (from the cycle's start): f = f_start + (f_max - f_start) m / warm
  for m < warm, else f_min + (f_max - f_min) (length - m) / length. Step n belongs to the first
  cycle whose cumulative end is >= n (ldm's ``find_in_interval``). One cycle from the scalar
  fields (``warmup_steps``, ``cycle_length``, ``f_*``) or several from ``lambda_cycles``; the
  cycles must cover the run.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable

import torch

from .config import LambdaCycle, OptimConfig

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
        return _lambda_linear(cfg, total_steps)
    raise ValueError(
        f"unknown optim.schedule {cfg.schedule!r}; valid: constant, cosine, lambda_linear"
    )


def _lambda_linear(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    cycles = cfg.lambda_cycles or (
        LambdaCycle(cfg.warmup_steps, cfg.cycle_length, cfg.f_start, cfg.f_max, cfg.f_min),
    )
    for i, c in enumerate(cycles):
        if c.cycle_length <= 0 or c.warmup_steps < 0:
            where = f"optim.lambda_cycles[{i}]" if cfg.lambda_cycles else "optim"
            raise ValueError(
                f"{where}: need cycle_length > 0 and warmup_steps >= 0, got "
                f"{c.cycle_length} and {c.warmup_steps}"
            )
    ends = list(itertools.accumulate(c.cycle_length for c in cycles))  # cumulative cycle ends
    if ends[-1] < total_steps:  # ldm's scheduler has no value past its cycles
        name = "cycle_length" if not cfg.lambda_cycles else "sum of lambda_cycles' lengths"
        raise ValueError(
            f"optim.{name}={ends[-1]} is shorter than the run ({total_steps} steps); "
            "LambdaLinear would extrapolate below f_min"
        )

    def lambda_linear(n: int) -> float:
        i = bisect.bisect_left(ends, n)  # the first cycle with ends[i] >= n
        c = cycles[min(i, len(cycles) - 1)]
        m = n - (ends[i - 1] if i > 0 else 0)
        if m < c.warmup_steps:
            return (c.f_max - c.f_start) / c.warmup_steps * m + c.f_start
        return c.f_min + (c.f_max - c.f_min) * (c.cycle_length - m) / c.cycle_length

    return lambda_linear


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepping once per optimiser step (state_dict for resume)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
