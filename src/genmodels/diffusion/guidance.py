"""Classifier-free guidance as a denoiser wrapper (Ho & Salimans 2022).

``CFGDenoiser(denoiser, uncond, scale)`` is itself a denoiser: called with the conditional
keyword arguments, it runs cond and uncond in one batched call and combines the two x0
estimates, D = D_u + w (D_c - D_u) (identical to guiding eps or v, since each is affine in x0
for fixed x and sigma). Options:

* ``rescale`` (phi): guidance rescale of Lin et al. 2023, Sec. 3.4 / Algorithm 2, applied to
  the v-prediction as in the paper: v_cfg is rescaled to the per-sample std of v_cond and
  mixed with weight phi.
* ``scale`` may be a callable ``scale(sigma: float) -> float``: a per-step guidance schedule.
* ``sigma_range=(lo, hi)``: apply guidance only for lo <= sigma <= hi (guidance interval,
  Kynkäänniemi et al. 2024); outside it only the conditional branch runs.

With an effective scale of 1 only the conditional branch is evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .denoisers import WrappedDenoiser, append_dims

__all__ = ["CFGDenoiser", "cfg_cutoff_range", "concat_cond", "rescale_guidance"]


def concat_cond(cond: Mapping[str, Any], uncond: Mapping[str, Any]) -> dict[str, Any]:
    """Concatenate cond and uncond keyword arguments along the batch axis (cond first)."""
    if set(cond) != set(uncond):
        raise ValueError(
            f"cond and uncond must have the same keys, got {sorted(cond)} and {sorted(uncond)}"
        )
    out: dict[str, Any] = {}
    for key, c in cond.items():
        u = uncond[key]
        if isinstance(c, Tensor):
            if isinstance(u, Tensor) and u.shape[0] == 1 and c.shape[0] > 1:
                u = u.expand(c.shape[0], *u.shape[1:])  # one uncond for the whole batch
            if not isinstance(u, Tensor) or c.shape != u.shape:
                got = tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__
                raise ValueError(
                    f"cond[{key!r}] has shape {tuple(c.shape)} but uncond[{key!r}] has {got}; "
                    "they must match (an uncond batch of 1 is broadcast)"
                )
            out[key] = torch.cat([c, u])
        elif c is None and u is None:
            out[key] = None
        else:
            raise ValueError(f"cond[{key!r}] must be a tensor (or None in both), got {type(c)}")
    return out


def rescale_guidance(
    x: Tensor, sigma: Tensor, x0_cond: Tensor, x0_cfg: Tensor, phi: float
) -> Tensor:
    """Guidance rescale (Lin et al. 2023, Algorithm 2) on the v-prediction, returned as x0.

    In variance-exploding coordinates with a = 1/sqrt(1+sigma^2), b = sigma a:
    eps = (x - x0)/sigma, v = a eps - b x0 and back x0 = a^2 x - b v.
    """
    s = append_dims(sigma.to(torch.float32), x.ndim)
    a = (1 + s**2) ** -0.5
    b = s * a

    def to_v(x0: Tensor) -> Tensor:
        return a * (x - x0) / s - b * x0

    v_cond, v_cfg = to_v(x0_cond), to_v(x0_cfg)
    dims = tuple(range(1, x.ndim))
    std_cond = v_cond.std(dim=dims, keepdim=True)
    std_cfg = v_cfg.std(dim=dims, keepdim=True)
    v_rescaled = v_cfg * (std_cond / std_cfg)
    v = phi * v_rescaled + (1 - phi) * v_cfg
    return a**2 * x - b * v


def cfg_cutoff_range(cutoff: float) -> tuple[float, float] | None:
    """The guidance interval of a CFG cut-off: guidance only at sigma >= ``cutoff``; below it the
    unconditional pass is skipped (A1111's "negative guidance minimum sigma", ComfyUI's CFG
    cut-off: late steps change little under guidance). 0 is no cut-off."""
    cutoff = float(cutoff)
    if not math.isfinite(cutoff) or cutoff < 0:
        raise ValueError(f"the CFG cut-off must be a finite sigma >= 0, got {cutoff}")
    return (cutoff, math.inf) if cutoff > 0 else None


class CFGDenoiser(WrappedDenoiser):
    """Classifier-free guidance around a denoiser; returns a denoiser."""

    def __init__(
        self,
        denoiser: Callable[..., Tensor],
        uncond: Mapping[str, Any],
        scale: float | Callable[[float], float] = 7.5,
        rescale: float = 0.0,
        sigma_range: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(denoiser)
        if not callable(scale) and float(scale) < 0:
            raise ValueError(f"guidance scale must be >= 0, got {scale}")
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"guidance rescale phi must be in [0, 1], got {rescale}")
        if sigma_range is not None and not (0 <= sigma_range[0] <= sigma_range[1]):
            raise ValueError(f"sigma_range must be (lo, hi) with 0 <= lo <= hi, got {sigma_range}")
        self.uncond = dict(uncond)
        self.scale = scale
        self.rescale = rescale
        self.sigma_range = sigma_range

    def scale_at(self, sigma: float) -> float:
        """The guidance scale used at noise level sigma."""
        if self.sigma_range is not None and not (
            self.sigma_range[0] <= sigma <= self.sigma_range[1]
        ):
            return 1.0
        return float(self.scale(sigma)) if callable(self.scale) else float(self.scale)

    def forward(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        w = self.scale_at(float(sigma.max()))
        if w == 1.0:
            return self.denoiser(x, sigma, **cond)
        both = self.denoiser(
            torch.cat([x, x]), torch.cat([sigma, sigma]), **concat_cond(cond, self.uncond)
        )
        x0_cond, x0_uncond = both.chunk(2)
        x0 = x0_uncond + w * (x0_cond - x0_uncond)
        if self.rescale > 0:
            x0 = rescale_guidance(x, sigma, x0_cond, x0, self.rescale)
        return x0
