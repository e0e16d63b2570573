"""NaN/Inf guards: fail with a message instead of writing a black image.

NaN/Inf weights, an overflowing dtype or a non-finite guidance scale make every later value
NaN, which the final clamp turns into a black (or white) image written with exit status 0.
``FiniteWatch`` wraps the sampler callback and notes the first step whose x0 estimate is not
finite; on the CPU it stops right there, on an accelerator it keeps the step on the device (no
synchronisation per step) and ``check`` reports it after sampling.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["FiniteWatch", "NonFiniteError", "check_finite"]


class NonFiniteError(ValueError):
    """A tensor that should hold finite numbers holds NaN or Inf."""


_HINT = "NaN/Inf weights in the checkpoint, or a dtype that overflows (try --dtype fp32)?"


def check_finite(t: Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteError(f"{what} holds NaN/Inf values")


class FiniteWatch:
    """A sampler callback recording the first step with a non-finite x0 estimate."""

    def __init__(self, callback: Callable[[dict], None] | None, steps: int) -> None:
        self.callback, self.steps = callback, steps
        self.first: Tensor | None = None  # step index, -1 while all are finite

    def __call__(self, info: dict) -> None:
        denoised = info.get("denoised", info.get("x"))
        if isinstance(denoised, Tensor):
            bad = ~torch.isfinite(denoised).all()
            step = torch.full_like(bad, int(info.get("i", 0)), dtype=torch.long)
            if self.first is None:
                self.first = torch.where(bad, step, -1)
            else:
                self.first = torch.where((self.first < 0) & bad, step, self.first)
            if bad.device.type == "cpu" and bool(bad):  # free on the CPU: stop at once
                self._fail(int(info.get("i", 0)))
        if self.callback is not None:
            self.callback(info)

    def _fail(self, step: int | None) -> None:
        where = "" if step is None or step < 0 else f" from step {step + 1} of {self.steps}"
        raise NonFiniteError(f"sampling produced NaN/Inf values{where}; {_HINT}")

    def check(self, latents: Tensor) -> None:
        """NonFiniteError naming the first bad step when ``latents`` are not all finite."""
        if not bool(torch.isfinite(latents).all()):
            self._fail(None if self.first is None else int(self.first))
