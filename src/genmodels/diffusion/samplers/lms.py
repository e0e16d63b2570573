"""Linear multistep (Adams-Bashforth on a non-uniform sigma grid) over the Karras ODE
(k-diffusion's ``sample_lms``, after Katherine Crowson's original; PNDM/LMS in Liu et al. 2022).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from genmodels.diffusion.samplers.common import (
    Callback,
    Denoiser,
    notify,
    progress,
    to_d,
    validate_sigmas,
)

__all__ = ["linear_multistep_coeff", "sample_lms"]


@functools.lru_cache(maxsize=16)
def _gauss_legendre(order: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(order)


def linear_multistep_coeff(order: int, t: np.ndarray, i: int, j: int) -> float:
    """``int_{t[i]}^{t[i+1]} l_j(tau) dtau`` for the Lagrange basis polynomial ``l_j`` through the
    ``order`` past nodes ``t[i], t[i-1], ..., t[i-order+1]`` (``l_j(t[i-j]) = 1``).

    The integrand is a polynomial of degree ``order - 1``, so Gauss-Legendre quadrature with
    ``order`` nodes is exact (k-diffusion uses adaptive ``scipy.integrate.quad``, which agrees to
    its tolerance; we avoid a runtime scipy dependency).
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    if order - 1 > i:
        raise ValueError(f"Order {order} too high for step {i}")
    a, b = float(t[i]), float(t[i + 1])
    nodes, weights = _gauss_legendre(order)
    tau = (b - a) / 2 * nodes + (a + b) / 2  # nodes mapped from [-1, 1] to [a, b]
    basis = np.ones_like(tau)
    for k in range(order):
        if k != j:
            basis *= (tau - t[i - k]) / (t[i - j] - t[i - k])
    return float((b - a) / 2 * np.dot(weights, basis))


@torch.no_grad()
def sample_lms(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    order: int = 4,
) -> Tensor:
    """Linear multistep method of ``order`` on the sigma grid (warm-up with lower orders)."""
    validate_sigmas(sigmas)
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    t = sigmas.detach().cpu().double().numpy()
    ds: list[Tensor] = []  # past derivatives, oldest first
    for i in progress(len(sigmas) - 1, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        notify(callback, x, i, sigmas[i], sigmas[i], denoised)
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, t, i, j) for j in range(cur_order)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x
