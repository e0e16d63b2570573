"""The Beta distribution's quantile function, for the ``beta`` scheduler, without scipy.

The regularised incomplete beta function I_x(a, b) is evaluated with its continued fraction
(Abramowitz & Stegun 26.5.8, evaluated by the modified Lentz method) and inverted by bisection.
Everything is vectorised over x in float64; accuracy is ~1e-12, far below what rounding the
result to an integer timestep needs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_TINY = 1e-300


def _continued_fraction(x: Tensor, a: float, b: float, terms: int = 200) -> Tensor:
    """The continued fraction of I_x(a, b) (A&S 26.5.8), converging for x < (a+1)/(a+b+2)."""
    c = torch.ones_like(x)
    d = 1 - (a + b) * x / (a + 1)
    d = 1 / torch.where(d.abs() < _TINY, torch.full_like(d, _TINY), d)
    h = d.clone()
    for m in range(1, terms + 1):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / torch.where(d.abs() < _TINY, torch.full_like(d, _TINY), d)
            c = 1 + numerator / c
            c = torch.where(c.abs() < _TINY, torch.full_like(c, _TINY), c)
            delta = d * c
            h = h * delta
        if bool(((delta - 1).abs() < 1e-15).all()):
            break
    return h


def betainc(x: Tensor, a: float, b: float) -> Tensor:
    """Regularised incomplete beta function I_x(a, b) for x in [0, 1]."""
    x = x.double().clamp(0, 1)
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    direct = x < (a + 1) / (a + b + 2)
    xs = torch.where(direct, x, 1 - x)  # use the symmetry I_x(a,b) = 1 - I_{1-x}(b,a)
    aa = torch.where(direct, torch.full_like(x, a), torch.full_like(x, b))
    bb = torch.where(direct, torch.full_like(x, b), torch.full_like(x, a))
    inner = x.new_empty(x.shape)
    for sel, pa, pb in ((direct, a, b), (~direct, b, a)):
        if sel.any():
            inner[sel] = _continued_fraction(xs[sel], pa, pb)
    safe = xs.clamp(min=_TINY)
    front = torch.exp(aa * safe.log() + bb * torch.log1p(-safe.clamp(max=1 - 1e-16)) - log_beta)
    value = front * inner / aa
    out = torch.where(direct, value, 1 - value)
    out = torch.where(x <= 0, torch.zeros_like(out), out)
    return torch.where(x >= 1, torch.ones_like(out), out)


def beta_ppf(q: Tensor, a: float, b: float, iterations: int = 60) -> Tensor:
    """Quantiles of Beta(a, b): the x with I_x(a, b) = q, by bisection (float64)."""
    if a <= 0 or b <= 0:
        raise ValueError(f"beta distribution parameters must be positive, got a={a}, b={b}")
    q = q.double()
    lo, hi = torch.zeros_like(q), torch.ones_like(q)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        below = betainc(mid, a, b) < q
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    out = (lo + hi) / 2
    out = torch.where(q <= 0, torch.zeros_like(out), out)
    return torch.where(q >= 1, torch.ones_like(out), out)
