"""DPM-Solver (Lu et al. 2022, https://arxiv.org/abs/2206.00927) in k-diffusion's formulation:
``dpm_fast`` (fixed steps, orders 3/2/1, Algorithms 4-5 of the paper) and ``dpm_adaptive``
(DPM-Solver-12/23 with a PID step-size controller, Section 4.1 and Algorithm 2).

Time is ``t = -log(sigma)`` (the half log-SNR lambda for VE); the noise prediction is
``eps = (x - D(x, sigma)) / sigma``. These samplers take ``sigma_min, sigma_max`` (and a number
of model evaluations ``n``) instead of a sigma list.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from genmodels.diffusion.noise import NoiseSampler, default_noise_sampler
from genmodels.diffusion.samplers.common import (
    Callback,
    Denoiser,
    get_ancestral_step,
    validate_sigma_range,
)

__all__ = ["PIDStepSizeController", "DPMSolver", "sample_dpm_fast", "sample_dpm_adaptive"]


class PIDStepSizeController:
    """PID controller for adaptive step sizes (Söderlind 2003; as used by DPM-Solver-12/23)."""

    def __init__(
        self,
        h: float,
        pcoeff: float,
        icoeff: float,
        dcoeff: float,
        order: float = 1,
        accept_safety: float = 0.81,
        eps: float = 1e-8,
    ) -> None:
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    @staticmethod
    def limiter(x: float) -> float:
        return 1 + math.atan(x - 1)

    def propose_step(self, error: float | Tensor) -> bool:
        """Scale ``self.h`` from the scaled error; return whether the last step is accepted."""
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = self.limiter(factor)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


class DPMSolver:
    """DPM-Solver-1/2/3 single steps over a denoiser, with a per-step cache of eps evaluations."""

    def __init__(
        self,
        model: Denoiser,
        extra_args: dict | None = None,
        eps_callback=None,
        info_callback=None,
    ) -> None:
        self.model = model
        self.extra_args = {} if extra_args is None else extra_args
        self.eps_callback = eps_callback
        self.info_callback = info_callback

    @staticmethod
    def t(sigma: Tensor) -> Tensor:
        return -sigma.log()

    @staticmethod
    def sigma(t: Tensor) -> Tensor:
        return t.neg().exp()

    def eps(self, cache: dict[str, Tensor], key: str, x: Tensor, t: Tensor) -> Tensor:
        """Noise prediction at (x, t); evaluations are stored in ``cache`` under ``key``."""
        if key not in cache:
            sigma = self.sigma(t)
            denoised = self.model(x, sigma * x.new_ones([x.shape[0]]), **self.extra_args)
            cache[key] = (x - denoised) / sigma
            if self.eps_callback is not None:
                self.eps_callback()
        return cache[key]

    def dpm_solver_1_step(self, x, t, t_next, cache) -> Tensor:
        """DPM-Solver-1 (= DDIM): ``x - sigma(t_next) (e^h - 1) eps``."""
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        return x - self.sigma(t_next) * h.expm1() * eps

    def dpm_solver_2_step(self, x, t, t_next, cache, r1: float = 1 / 2) -> Tensor:
        """DPM-Solver-2 (paper Algorithm 4) with intermediate point ``t + r1 h``."""
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        sigma_next = self.sigma(t_next)
        return x - sigma_next * h.expm1() * eps - sigma_next / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def dpm_solver_3_step(self, x, t, t_next, cache, r1: float = 1 / 3, r2: float = 2 / 3):
        """DPM-Solver-3 (paper Algorithm 5) with intermediate points ``t + r1 h``, ``t + r2 h``."""
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        phi_r2 = (r2 * h).expm1() / (r2 * h) - 1
        u2 = (
            x
            - self.sigma(s2) * (r2 * h).expm1() * eps
            - self.sigma(s2) * (r2 / r1) * phi_r2 * (eps_r1 - eps)
        )
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        sigma_next = self.sigma(t_next)
        phi = h.expm1() / h - 1
        return x - sigma_next * h.expm1() * eps - sigma_next / r2 * phi * (eps_r2 - eps)

    def _ancestral_target(self, s: Tensor, t: Tensor, t_end: Tensor, eta: float):
        """Deterministic target ``t_`` (from sigma_down, capped at ``t_end``) and noise std."""
        if not eta:
            return t, 0.0
        sd, _ = get_ancestral_step(self.sigma(s), self.sigma(t), eta)
        t_ = torch.minimum(t_end, self.t(sd))
        return t_, (self.sigma(t) ** 2 - self.sigma(t_) ** 2) ** 0.5

    def dpm_solver_fast(
        self,
        x: Tensor,
        t_start: Tensor,
        t_end: Tensor,
        nfe: int,
        eta: float = 0.0,
        s_noise: float = 1.0,
        noise_sampler: NoiseSampler | None = None,
    ) -> Tensor:
        """DPM-Solver-fast: ``floor(nfe / 3) + 1`` uniform steps in t, orders 3, ..., 3, then 2/1
        to spend exactly ``nfe`` model evaluations (paper Section 3.4)."""
        noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
        if not t_end > t_start and eta:
            raise ValueError("eta must be 0 for reverse sampling")
        m = math.floor(nfe / 3) + 1
        ts = torch.linspace(t_start, t_end, m + 1, device=x.device, dtype=t_start.dtype)
        if nfe % 3 == 0:
            orders = [3] * (m - 2) + [2, 1]
        else:
            orders = [3] * (m - 1) + [nfe % 3]
        steps = {1: self.dpm_solver_1_step, 2: self.dpm_solver_2_step, 3: self.dpm_solver_3_step}
        for i, order in enumerate(orders):
            cache: dict[str, Tensor] = {}
            t, t_next = ts[i], ts[i + 1]
            t_next_, su = self._ancestral_target(t, t_next, t_end, eta)
            eps = self.eps(cache, "eps", x, t)
            if self.info_callback is not None:
                denoised = x - self.sigma(t) * eps
                self.info_callback({"x": x, "i": i, "t": ts[i], "t_up": t, "denoised": denoised})
            x = steps[order](x, t, t_next_, cache)
            x = x + su * s_noise * noise_sampler(self.sigma(t), self.sigma(t_next))
        return x

    def dpm_solver_adaptive(
        self,
        x: Tensor,
        t_start: Tensor,
        t_end: Tensor,
        order: int = 3,
        rtol: float = 0.05,
        atol: float = 0.0078,
        h_init: float = 0.05,
        pcoeff: float = 0.0,
        icoeff: float = 1.0,
        dcoeff: float = 0.0,
        accept_safety: float = 0.81,
        eta: float = 0.0,
        s_noise: float = 1.0,
        noise_sampler: NoiseSampler | None = None,
    ) -> tuple[Tensor, dict[str, Any]]:
        """DPM-Solver-12 (order 2) or -23 (order 3): embedded pair, error-controlled steps."""
        noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
        if order not in {2, 3}:
            raise ValueError(f"order should be 2 or 3, got {order}")
        forward = t_end > t_start
        if not forward and eta:
            raise ValueError("eta must be 0 for reverse sampling")
        h_init = abs(h_init) * (1 if forward else -1)
        atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
        s, x_prev = t_start, x
        pid = PIDStepSizeController(
            h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety
        )
        info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
        while s < t_end - 1e-5 if forward else s > t_end + 1e-5:
            cache: dict[str, Tensor] = {}
            t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
            t_, su = self._ancestral_target(s, t, t_end, eta)
            eps = self.eps(cache, "eps", x, s)
            denoised = x - self.sigma(s) * eps
            if order == 2:
                x_low = self.dpm_solver_1_step(x, s, t_, cache)
                x_high = self.dpm_solver_2_step(x, s, t_, cache)
            else:
                x_low = self.dpm_solver_2_step(x, s, t_, cache, r1=1 / 3)
                x_high = self.dpm_solver_3_step(x, s, t_, cache)
            delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
            error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
            if pid.propose_step(error):
                x_prev = x_low
                x = x_high + su * s_noise * noise_sampler(self.sigma(s), self.sigma(t))
                s = t
                info["n_accept"] += 1
            else:
                info["n_reject"] += 1
            info["nfe"] += order
            info["steps"] += 1
            if self.info_callback is not None:
                self.info_callback(
                    {
                        "x": x,
                        "i": info["steps"] - 1,
                        "t": s,
                        "t_up": s,
                        "denoised": denoised,
                        "error": error,
                        "h": pid.h,
                        **info,
                    }  # fmt: skip
                )
        return x, info


def _t_range(x: Tensor, sigma_min, sigma_max) -> tuple[Tensor, Tensor]:
    """``(t_start, t_end) = (-log sigma_max, -log sigma_min)`` as scalars: float32 like
    k-diffusion, or float64 when x is float64 (so float64 runs are not limited by float32 t)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    sigmas = torch.tensor([float(sigma_max), float(sigma_min)], dtype=dtype)
    t = DPMSolver.t(sigmas)
    return t[0], t[1]


def _solver(model, extra_args, callback, bar) -> DPMSolver:
    solver = DPMSolver(model, extra_args, eps_callback=bar.update)
    if callback is not None:
        solver.info_callback = lambda info: callback(
            {"sigma": solver.sigma(info["t"]), "sigma_hat": solver.sigma(info["t_up"]), **info}
        )
    return solver


@torch.no_grad()
def sample_dpm_fast(
    model: Denoiser,
    x: Tensor,
    sigma_min: float,
    sigma_max: float,
    n: int,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """DPM-Solver-Fast with ``n`` model evaluations (fixed step size)."""
    validate_sigma_range(sigma_min, sigma_max)
    if int(n) != n or n < 1:
        raise ValueError(f"n (number of model evaluations) must be an integer >= 1, got {n}")
    with tqdm(total=n, disable=disable) as bar:
        solver = _solver(model, extra_args, callback, bar)
        t_start, t_end = _t_range(x, sigma_min, sigma_max)
        return solver.dpm_solver_fast(x, t_start, t_end, int(n), eta, s_noise, noise_sampler)


@torch.no_grad()
def sample_dpm_adaptive(
    model: Denoiser,
    x: Tensor,
    sigma_min: float,
    sigma_max: float,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    return_info: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Any]]:
    """DPM-Solver-12/23 with adaptive step size; ``return_info`` adds step/NFE counts."""
    validate_sigma_range(sigma_min, sigma_max)
    with tqdm(disable=disable) as bar:
        solver = _solver(model, extra_args, callback, bar)
        t_start, t_end = _t_range(x, sigma_min, sigma_max)
        x, info = solver.dpm_solver_adaptive(
            x, t_start, t_end, order, rtol, atol, h_init, pcoeff, icoeff, dcoeff,
            accept_safety, eta, s_noise, noise_sampler,
        )  # fmt: skip
    return (x, info) if return_info else x
