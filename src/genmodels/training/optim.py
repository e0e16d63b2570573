"""Optimiser, LR schedule and the optimiser step every training task takes.

One step: (gradients are in) -> unscale (fp16) -> clip to ``optim.grad_clip`` -> optimiser step
-> grad-scaler update -> zero the gradients -> LR schedule step. Mixed precision: ``bf16``
autocast needs no scaling; ``fp16`` uses a ``GradScaler`` (on GPU).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Any

import torch

from .config import OptimConfig
from .lr_schedules import make_scheduler

__all__ = ["AMP_DTYPES", "OptimizerStep", "autocast", "make_optimizer"]

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

Params = Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``precision`` (``fp32``: a no-op context)."""
    dtype = AMP_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def make_optimizer(
    params: Params, cfg: OptimConfig, lr: float | None = None
) -> torch.optim.Optimizer:
    """AdamW (``cfg.name="adamw"``) or bitsandbytes' 8-bit AdamW (``"adamw8bit"``) over
    ``params`` (tensors or param groups); ``lr`` replaces ``cfg.lr`` (a discriminator's)."""
    kw = dict(lr=cfg.lr if lr is None else lr, betas=cfg.betas, eps=cfg.eps,
              weight_decay=cfg.weight_decay)  # fmt: skip
    params = list(params)
    if cfg.name == "adamw":
        tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
        # torch's fused AdamW kernel (CPU and CUDA, torch >= 2.4): one pass over each tensor
        # instead of the per-parameter loop of ~10 ops that is torch's default on the CPU
        fused = bool(tensors) and all(p.device.type in ("cpu", "cuda") for p in tensors)
        return torch.optim.AdamW(params, **kw, fused=fused)
    if cfg.name == "adamw8bit":
        try:
            import bitsandbytes
        except ImportError as exc:
            raise ValueError(
                "optim.name='adamw8bit' needs the bitsandbytes package, which is not installed "
                "(pip install bitsandbytes), or use optim.name=adamw"
            ) from exc
        return bitsandbytes.optim.AdamW8bit(params, **kw)
    raise ValueError(f"unknown optim.name {cfg.name!r}; valid: adamw, adamw8bit")


class OptimizerStep:
    """An optimiser with its LR schedule, grad scaler and clipping: ``step()`` after backward.

    ``state_dict()`` / ``load_state_dict()`` cover all three, for checkpoints.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        cfg: OptimConfig,
        total_steps: int,
        device: torch.device,
        precision: str = "fp32",
    ) -> None:
        self.optimizer = optimizer
        self.scheduler = make_scheduler(optimizer, cfg, total_steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.grad_clip = cfg.grad_clip

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def params(self) -> list[torch.nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def step(self) -> dict[str, float]:
        """Clip, step, update the schedule; returns the LR used and the gradient norm."""
        self.scaler.unscale_(self.optimizer)
        clip = self.grad_clip if self.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params(), clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return {"lr": lr, "grad_norm": float(grad_norm)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
