"""UniPC: unified predictor-corrector multistep sampler (Zhao et al. 2023,
https://arxiv.org/abs/2302.04867), data-prediction form with the B(h) variants bh1 / bh2.

In sigma space (``x = x0 + sigma * eps``, VP ``alpha = 1 / sqrt(1 + sigma^2)``) the half
log-SNR is ``lambda = -log(sigma)``, and the paper's data-prediction update (Algorithm 1-2,
``x_t = sigma_t / sigma_s x_s - alpha_t h phi_1(h) m_s - alpha_t B(h) sum_k rho_k D_k``) divided
by ``alpha_t`` becomes

    x_next = (sigma_next / sigma) x - expm1(-h) m0 - B(h) sum_k rho_k D1_k,
    h = log(sigma / sigma_next),  r_k = (lambda_k - lambda_0) / h,  D1_k = (m_k - m0) / r_k,

with ``B(h) = -h`` (bh1) or ``expm1(-h)`` (bh2) and ``rho`` solving ``R rho = b`` (eq. 8-9):
``R[i, k] = r_k^i`` and ``b_i = (i+1)! (-h) phi_{i+2}(-h) / B(h)`` (see :func:`unipc_rhos`).
UniP (predictor) of order p uses p - 1 past outputs; UniC (corrector) re-uses the model output
at the predicted point to correct it, raising the order by one at no extra model call.

Details as diffusers' UniPCMultistepScheduler (predict_x0=True): order 2 predictor and order 1
corrector use ``rho = 1/2``; warm start ``min(order, i + 1)``; ``lower_order_final`` caps the
order at the number of remaining steps; no corrector after the last step. A step to
``sigma = 0`` (``h = inf``) is taken first order (``x_next = m0``): the polynomial
extrapolation has no finite limit there.

Shapes: ``x`` is (B, ...), ``sigmas`` is (N + 1,) strictly decreasing, ``model(x, sigma (B,))``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from genmodels.diffusion.samplers.common import Callback, Denoiser, notify, progress
from genmodels.diffusion.samplers.multistep import check_order, check_strictly_decreasing

__all__ = ["VARIANTS", "sample_uni_pc", "sample_uni_pc_bh2", "unipc_rhos"]

VARIANTS = ("bh1", "bh2")


def unipc_rhos(rks: list[float], h: float, variant: str, corrector: bool) -> tuple[float, list]:
    """``(B(h), rho)`` for one UniP (``corrector=False``, ``len(rks) + 1`` = order) or UniC
    (``corrector=True``, ``len(rks) + 1`` = p, one more rho for the new output) update.

    With ``hh = -h`` and the phi functions ``phi_1(z) = (e^z - 1) / z``,
    ``phi_{k+1}(z) = (phi_k(z) - 1 / k!) / z``, the right-hand side is
    ``b_k = k! hh phi_{k+1}(hh) / B(h)`` for k = 1..p (Zhao et al. 2023, eq. 8 and
    Algorithm 2), built by the recursion ``psi_1 = expm1(hh) / hh - 1``,
    ``psi_{k+1} = psi_k / hh - 1 / (k+1)!`` (``psi_k = hh phi_{k+1}(hh)``).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown UniPC variant {variant!r}; valid: {', '.join(VARIANTS)}")
    hh = -h
    b_h = hh if variant == "bh1" else math.expm1(hh)
    p = len(rks) + 1
    r_full = np.array([*rks, 1.0])
    h_phi_k, factorial, b = math.expm1(hh) / hh - 1, 1, []
    for i in range(1, p + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    big_r = np.stack([r_full ** (i - 1) for i in range(1, p + 1)])  # (p, p)
    if corrector:
        rhos = [0.5] if p == 1 else np.linalg.solve(big_r, np.array(b)).tolist()
    elif p == 1:
        rhos = []
    else:
        rhos = [0.5] if p == 2 else np.linalg.solve(big_r[:-1, :-1], np.array(b[:-1])).tolist()
    return b_h, rhos


def _uni_update(
    x: Tensor,
    ms: list[Tensor],
    sig: list[float],
    sigma_next: float,
    variant: str,
    m_new: Tensor | None = None,
) -> Tensor:
    """One UniP step (``m_new is None``) or UniC correction from ``sig[0]`` to ``sigma_next``.

    ``ms`` / ``sig``: past data predictions and their sigmas, newest first (``ms[0] = m0``).
    """
    m0, sigma = ms[0], sig[0]
    if sigma_next == 0:
        return m0
    h = math.log(sigma / sigma_next)
    rks = [math.log(sigma / s) / h for s in sig[1:]]  # (lambda_k - lambda_0) / h
    b_h, rhos = unipc_rhos(rks, h, variant, corrector=m_new is not None)
    x_next = x * (sigma_next / sigma) - m0 * math.expm1(-h)
    d1s = [(m - m0) / r for m, r in zip(ms[1:], rks)]
    if m_new is not None:
        d1s.append(m_new - m0)
    if d1s:
        res = d1s[0] * rhos[0]
        for rho, d1 in zip(rhos[1:], d1s[1:]):
            res = res + d1 * rho
        x_next = x_next - res * b_h
    return x_next


def _sample_unipc(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict | None,
    callback: Callback | None,
    disable: bool | None,
    order: int,
    lower_order_final: bool,
    variant: str,
) -> Tensor:
    check_strictly_decreasing(sigmas)
    check_order(order, 3)
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    sig_all = sigmas.detach().cpu().double().tolist()
    n_steps = len(sigmas) - 1
    ms: list[Tensor] = []  # data predictions, newest first
    x_last, last_order = x, 1
    for i in progress(n_steps, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        notify(callback, x, i, sigmas[i], sigmas[i], denoised)
        if ms:  # UniC: correct x_i with the output at the predicted point
            sig = sig_all[i - 1 :: -1][:last_order]
            x = _uni_update(x_last, ms[:last_order], sig, sig_all[i], variant, m_new=denoised)
        ms = [denoised] + ms[: order - 1]
        this_order = min(order, n_steps - i) if lower_order_final else order
        last_order = min(this_order, i + 1)
        x_last = x
        sig = sig_all[i::-1][:last_order]
        x = _uni_update(x, ms[:last_order], sig, sig_all[i + 1], variant)
    return x


@torch.no_grad()
def sample_uni_pc(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    order: int = 3,
    lower_order_final: bool = True,
) -> Tensor:
    """UniPC with B(h) = h ("bh1", Zhao et al. 2023), data prediction, multistep order <= 3."""
    return _sample_unipc(
        model, x, sigmas, extra_args, callback, disable, order, lower_order_final, "bh1"
    )


@torch.no_grad()
def sample_uni_pc_bh2(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    order: int = 3,
    lower_order_final: bool = True,
) -> Tensor:
    """UniPC with B(h) = e^h - 1 ("bh2", Zhao et al. 2023), data prediction, order <= 3."""
    return _sample_unipc(
        model, x, sigmas, extra_args, callback, disable, order, lower_order_final, "bh2"
    )
