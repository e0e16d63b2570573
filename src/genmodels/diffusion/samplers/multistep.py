"""Linear multistep samplers over the probability-flow ODE ``dx/dsigma = eps(x, sigma)``.

In sigma space (``x = x0 + sigma * eps``, ``eps = (x - D(x, sigma)) / sigma``) the ODE has no
linear term, so the PNDM "transfer" step (Liu et al. 2022, https://arxiv.org/abs/2202.09778,
eq. 9; it is exactly the DDIM step) is ``x_next = x + (sigma_next - sigma) * eps``, and a
multistep method only changes which combination of past ``eps`` it uses:

* ``plms``: PNDM's pseudo linear multistep (Liu et al. 2022, eq. 12-13; ldm's PLMSSampler,
  diffusers' PNDMScheduler with ``skip_prk_steps``): the first step is the pseudo improved Euler
  (Heun) step, then fixed-step Adams-Bashforth coefficients of order 2, 3 and 4.
* ``ipndm``: improved PNDM (Zhang & Chen 2022, https://arxiv.org/abs/2204.13902, Sec. 5): the
  same fixed coefficients with a lower-order Adams-Bashforth warm start instead of Runge-Kutta;
  a last step to ``sigma = 0`` returns the denoised estimate (ComfyUI's ``ipndm``).
* ``ipndm_v``: iPNDM with variable-step Adams-Bashforth coefficients (exact integrals of the
  Lagrange interpolant in sigma), so non-uniform schedules keep the order.
* ``deis``: DEIS tAB in log-sigma (Zhang & Chen 2022, eq. 14-15, "rho" = sigma): eps is
  interpolated by a polynomial in ``log sigma`` through the last ``order`` points and
  integrated exactly against ``dsigma = sigma d(log sigma)`` (exponential-integrator weights),
  as diffusers' DEISMultistepScheduler (``solver_type="logrho"``).

Shapes: ``x`` is (B, ...), ``sigmas`` is (N + 1,) strictly decreasing, ``model(x, sigma (B,))``.
"""

from __future__ import annotations

import math

import torch
from numpy.polynomial import Polynomial
from torch import Tensor

from genmodels.diffusion.samplers.common import (
    Callback,
    Denoiser,
    notify,
    progress,
    to_d,
    validate_sigmas,
)
from genmodels.diffusion.samplers.lms import linear_multistep_coeff

__all__ = [
    "AB_COEFFS",
    "check_order",
    "check_strictly_decreasing",
    "deis_coeffs",
    "sample_deis",
    "sample_ipndm",
    "sample_ipndm_v",
    "sample_plms",
]

# Fixed-step Adams-Bashforth weights, newest eps first (Liu et al. 2022, eq. 12).
AB_COEFFS: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def check_order(order: int, max_allowed: int, name: str = "order") -> None:
    """``order`` must be an int in ``[1, max_allowed]``."""
    if not isinstance(order, int) or isinstance(order, bool) or not 1 <= order <= max_allowed:
        raise ValueError(f"{name} must be an int in [1, {max_allowed}], got {order!r}")


def check_strictly_decreasing(sigmas: Tensor) -> None:
    """Shared checks plus strict decrease: multistep weights divide by sigma differences."""
    validate_sigmas(sigmas)
    if bool((sigmas[1:] >= sigmas[:-1]).any()):
        raise ValueError(f"sigmas must be strictly decreasing, got {sigmas.tolist()}")


def _combine(coeffs: tuple[float, ...] | list[float], ds: list[Tensor]) -> Tensor:
    """``sum_j coeffs[j] * ds[j]`` (``ds`` newest first)."""
    out = ds[0] * coeffs[0]
    for c, d in zip(coeffs[1:], ds[1:]):
        out = out + d * c
    return out


def deis_coeffs(sigmas: list[float], sigma_next: float) -> list[float]:
    """DEIS log-rho weights ``c_j = int_sigma^sigma_next l_j(log tau) dtau`` where ``l_j`` is
    the Lagrange basis in ``log sigma`` on ``sigmas`` (newest first, ``sigmas[0]`` the current).

    With ``v = log(tau / sigma)`` the integral is ``sigma * int_0^v_end l_j(v) e^v dv`` and
    ``int p(v) e^v dv = e^v (p - p' + p'' - ...)``; for ``sigma_next = 0`` (v_end = -inf) the
    upper term vanishes, so the last step to 0 needs no special case.
    """
    sigma = sigmas[0]
    nodes = [math.log(s / sigma) for s in sigmas]
    out = []
    for j, vj in enumerate(nodes):
        basis = Polynomial([1.0])
        for k, vk in enumerate(nodes):
            if k != j:
                basis = basis * Polynomial([-vk, 1.0]) / (vj - vk)
        q, term = Polynomial([0.0]), basis
        for m in range(len(nodes)):
            q, term = q + (-1) ** m * term, term.deriv()
        upper = 0.0 if sigma_next == 0 else sigma_next / sigma * q(math.log(sigma_next / sigma))
        out.append(sigma * (upper - q(0.0)))
    return out


@torch.no_grad()
def sample_plms(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    order: int = 4,
) -> Tensor:
    """Pseudo linear multistep (PNDM, Liu et al. 2022): a Heun first step, then fixed-step
    Adams-Bashforth of order 2..``order``. One model call per step, plus one on the first."""
    check_strictly_decreasing(sigmas)
    check_order(order, 4)
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    ds: list[Tensor] = []  # past eps, newest first
    for i in progress(len(sigmas) - 1, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        notify(callback, x, i, sigma, sigma, denoised)
        ds = [to_d(x, sigma, denoised)] + ds[: order - 1]
        dt = sigma_next - sigma
        if len(ds) == 1 and order > 1 and sigma_next > 0:
            # pseudo improved Euler: average eps at both ends of an Euler step (eq. 13)
            x_pred = x + ds[0] * dt
            d_pred = to_d(x_pred, sigma_next, model(x_pred, sigma_next * s_in, **extra_args))
            x = x + (ds[0] + d_pred) * (dt / 2)
        else:
            x = x + _combine(AB_COEFFS[len(ds)], ds) * dt
    return x


@torch.no_grad()
def sample_ipndm(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    max_order: int = 4,
) -> Tensor:
    """Improved PNDM (Zhang & Chen 2022): fixed-step Adams-Bashforth with a lower-order warm
    start; the step to sigma = 0 returns the denoised estimate."""
    check_strictly_decreasing(sigmas)
    check_order(max_order, 4, "max_order")
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    ds: list[Tensor] = []  # past eps, newest first
    for i in progress(len(sigmas) - 1, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        notify(callback, x, i, sigma, sigma, denoised)
        ds = [to_d(x, sigma, denoised)] + ds[: max_order - 1]
        if sigma_next == 0:
            x = denoised
        else:
            x = x + _combine(AB_COEFFS[len(ds)], ds) * (sigma_next - sigma)
    return x


@torch.no_grad()
def sample_ipndm_v(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    max_order: int = 4,
) -> Tensor:
    """iPNDM with variable-step Adams-Bashforth weights (exact Lagrange integrals in sigma, as
    k-diffusion's ``lms``); the step to sigma = 0 returns the denoised estimate.

    ComfyUI's ``ipndm_v`` (after zju-pi/diff-sampler) uses closed-form weights that agree at
    order 2 and on uniform grids, but at orders 3-4 on non-uniform grids they do not integrate
    quadratics exactly; we use the exact weights.
    """
    check_strictly_decreasing(sigmas)
    check_order(max_order, 4, "max_order")
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    t = sigmas.detach().cpu().double().numpy()
    ds: list[Tensor] = []  # past eps, newest first
    for i in progress(len(sigmas) - 1, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        notify(callback, x, i, sigma, sigma, denoised)
        ds = [to_d(x, sigma, denoised)] + ds[: max_order - 1]
        if sigma_next == 0:
            x = denoised
        else:
            coeffs = [linear_multistep_coeff(len(ds), t, i, j) for j in range(len(ds))]
            x = x + _combine(coeffs, ds)
    return x


def _deis_order(i: int, n_steps: int, max_order: int, lower_order_final: bool) -> int:
    """Warm start ``min(max_order, i + 1)``; with ``lower_order_final`` and fewer than 15 steps
    the last step is first order and the one before at most second (diffusers' rule)."""
    order = min(max_order, i + 1)
    if lower_order_final and n_steps < 15:
        order = min(order, n_steps - i)
    return order


@torch.no_grad()
def sample_deis(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    max_order: int = 3,
    lower_order_final: bool = True,
) -> Tensor:
    """DEIS tAB in log sigma (Zhang & Chen 2022), multistep up to ``max_order`` (<= 3)."""
    check_strictly_decreasing(sigmas)
    check_order(max_order, 3, "max_order")
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    t = sigmas.detach().cpu().double().tolist()
    n_steps = len(sigmas) - 1
    ds: list[Tensor] = []  # past eps, newest first
    for i in progress(n_steps, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        notify(callback, x, i, sigmas[i], sigmas[i], denoised)
        ds = [to_d(x, sigmas[i], denoised)] + ds[: max_order - 1]
        order = _deis_order(i, n_steps, max_order, lower_order_final)
        coeffs = deis_coeffs(t[i - order + 1 : i + 1][::-1], t[i + 1])
        x = x + _combine(coeffs, ds[:order])
    return x
