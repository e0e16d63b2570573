"""Tests for the samplers beyond k-diffusion: ddim, ddpm, lcm, plms, ipndm(_v), deis, uni_pc.

* Parity with diffusers 0.42.1 schedulers driving a tiny eps network through DiscreteDenoiser.
* Analytic: Gaussian data x0 ~ N(mu, s^2) has the exact denoiser
  D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2) and probability-flow ODE solution
  x(sigma) - mu = (x(sigma_0) - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_0^2).
* Bad input.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genmodels.diffusion.denoisers import DiscreteDenoiser
from genmodels.diffusion.samplers.ddim import sample_ddim, sample_ddpm, sample_lcm
from genmodels.diffusion.samplers.multistep import (
    deis_coeffs,
    sample_deis,
    sample_ipndm,
    sample_ipndm_v,
    sample_plms,
)
from genmodels.diffusion.samplers.registry import SAMPLER_INFO, SAMPLERS
from genmodels.diffusion.samplers.unipc import sample_uni_pc, sample_uni_pc_bh2

diffusers = pytest.importorskip("diffusers")

EXTRA_NAMES = ["ddim", "ddpm", "lcm", "plms", "ipndm", "ipndm_v", "deis", "uni_pc", "uni_pc_bh2"]
EXTRA_SAMPLERS = {name: SAMPLERS[name] for name in EXTRA_NAMES}

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


class TinyEps(nn.Module):
    """A fixed random nonlinear eps network on (B, C, L) inputs with integer timesteps."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("weight", torch.randn(channels, channels, generator=gen) * 0.5)
        self.register_buffer("bias", torch.randn(channels, 1, generator=gen) * 0.1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = torch.cos(torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1) / 300.0)
        return torch.tanh(torch.einsum("oc,bcl->bol", self.weight, x) + self.bias * temb)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _setup(scheduler):
    net = TinyEps()
    ac = scheduler.alphas_cumprod.clone()
    x_vp = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(1))
    return net, DiscreteDenoiser(net, ac, prediction="eps", quantize=True), x_vp


def _run_diffusers(scheduler, net, x_vp, seed=None, **step_kwargs):
    if seed is not None:
        step_kwargs["generator"] = torch.Generator().manual_seed(seed)
    x = x_vp.clone()
    for t in scheduler.timesteps:
        eps = net(x, t.expand(x.shape[0]))
        x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
    return x


def _noise(x: torch.Tensor, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(x.shape, generator=gen, dtype=x.dtype)


def _sigmas_from_timesteps(denoiser, timesteps, last: float) -> torch.Tensor:
    unique = list(dict.fromkeys(int(t) for t in timesteps))  # PNDM repeats one timestep
    return torch.cat([denoiser.sigmas[unique], torch.tensor([last])])


def _run_ours(sampler, denoiser, x_vp, sigmas, **kwargs):
    x = x_vp * (1 + sigmas[0] ** 2) ** 0.5  # VE sample at sigma_max
    return sampler(denoiser, x, sigmas, disable=True, **kwargs)


@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("alpha_to_one", [True, False])
def test_ddim_matches_diffusers(eta: float, alpha_to_one: bool) -> None:
    # set_alpha_to_one=True: the last step goes to alpha = 1, i.e. sigma = 0. With False (SD's
    # configuration, steps_offset=1) it stops at alphas_cumprod[0], i.e. sigma_min.
    sched = diffusers.DDIMScheduler(
        **SD_BETAS,
        clip_sample=False,
        set_alpha_to_one=alpha_to_one,
        steps_offset=0 if alpha_to_one else 1,
    )
    sched.set_timesteps(10)
    net, den, x_vp = _setup(sched)
    ref = _run_diffusers(sched, net, x_vp, seed=3, eta=eta)
    last = 0.0 if alpha_to_one else float(den.sigmas[0])
    sigmas = _sigmas_from_timesteps(den, sched.timesteps, last)
    out = _run_ours(sample_ddim, den, x_vp, sigmas, eta=eta, noise_sampler=_noise(x_vp, 3))
    out = out / (1 + sigmas[-1] ** 2) ** 0.5  # back to the VP sample
    assert _rel(out, ref) < 1e-5


def test_ddpm_matches_diffusers_and_ddim_eta_1() -> None:
    sched = diffusers.DDPMScheduler(**SD_BETAS, clip_sample=False, variance_type="fixed_small")
    sched.set_timesteps(10)
    net, den, x_vp = _setup(sched)
    ref = _run_diffusers(sched, net, x_vp, seed=4)
    sigmas = _sigmas_from_timesteps(den, sched.timesteps, 0.0)
    out = _run_ours(sample_ddpm, den, x_vp, sigmas, noise_sampler=_noise(x_vp, 4))
    assert _rel(out, ref) < 1e-5
    # the DDPM posterior is DDIM with eta = 1 (Song et al. 2020, Sec. 4.1)
    ddim = _run_ours(sample_ddim, den, x_vp, sigmas, eta=1.0, noise_sampler=_noise(x_vp, 4))
    assert _rel(ddim, out) < 1e-5


def test_plms_matches_diffusers_pndm() -> None:
    sched = diffusers.PNDMScheduler(**SD_BETAS, skip_prk_steps=True, set_alpha_to_one=True)
    sched.set_timesteps(10)
    net, den, x_vp = _setup(sched)
    ref = _run_diffusers(sched, net, x_vp)
    sigmas = _sigmas_from_timesteps(den, sched.timesteps, 0.0)
    calls = []
    counted = lambda x, sigma: calls.append(1) or den(x, sigma)  # noqa: E731
    out = _run_ours(sample_plms, counted, x_vp, sigmas)
    assert _rel(out, ref) < 1e-5
    assert len(calls) == len(sched.timesteps) == 11  # one extra call on the first step


@pytest.mark.parametrize("n_steps", [8, 16])
@pytest.mark.parametrize("order", [2, 3])
def test_deis_matches_diffusers(n_steps: int, order: int) -> None:
    sched = diffusers.DEISMultistepScheduler(**SD_BETAS, solver_order=order)
    sched.set_timesteps(n_steps)
    net, den, x_vp = _setup(sched)
    ref = _run_diffusers(sched, net, x_vp)
    sigmas = sched.sigmas.float()  # ends at sigma(t=0) > 0, as diffusers' DEIS does
    out = _run_ours(sample_deis, den, x_vp, sigmas, max_order=order)
    out = out / (1 + sigmas[-1] ** 2) ** 0.5
    assert _rel(out, ref) < 1e-4


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize(
    "variant, final", [("bh1", "sigma_min"), ("bh2", "sigma_min"), ("bh2", "zero")]
)
def test_uni_pc_matches_diffusers(variant: str, final: str, order: int) -> None:
    # diffusers' bh1 returns NaN on a last step to sigma = 0 (B(h) = -inf times a zero residual),
    # so bh1 is compared on a schedule ending at sigma_min; ours takes that step as x = m0.
    sched = diffusers.UniPCMultistepScheduler(
        **SD_BETAS,
        solver_type=variant,
        predict_x0=True,
        solver_order=order,
        final_sigmas_type=final,
    )
    sched.set_timesteps(9)
    net, den, x_vp = _setup(sched)
    ref = _run_diffusers(sched, net, x_vp)
    sampler = sample_uni_pc if variant == "bh1" else sample_uni_pc_bh2
    sigmas = sched.sigmas.float()
    out = _run_ours(sampler, den, x_vp, sigmas, order=order)
    out = out / (1 + sigmas[-1] ** 2) ** 0.5
    assert _rel(out, ref) < 1e-4


def test_uni_pc_bh1_last_step_to_zero_is_the_denoised_estimate() -> None:
    den = _gaussian_denoiser(0.3, 0.5)
    sigmas = torch.tensor([20.0, 5.0, 1.0, 0.2, 0.0], dtype=torch.float64)
    seen = []
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20
    out = sample_uni_pc(den, x, sigmas, disable=True, callback=seen.append)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, seen[-1]["denoised"])


def test_lcm_matches_diffusers() -> None:
    sched = diffusers.LCMScheduler(**SD_BETAS)
    sched.set_timesteps(4)
    net, den, x_vp = _setup(sched)
    ref = _run_diffusers(sched, net, x_vp, seed=5)

    def consistency(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        # LCM's boundary-condition scalings live in the denoiser (on the VP sample)
        t = int(den.sigma_to_t(sigma[:1], quantize=True))
        c_skip, c_out = sched.get_scalings_for_boundary_condition_discrete(t)
        return c_out * den(x, sigma) + c_skip * x / (1 + sigma[0] ** 2) ** 0.5

    sigmas = _sigmas_from_timesteps(den, sched.timesteps, 0.0)
    out = _run_ours(sample_lcm, consistency, x_vp, sigmas, noise_sampler=_noise(x_vp, 5))
    assert _rel(out, ref) < 1e-5


# ---------------------------------------------------------------- analytic: Gaussian data


def _gaussian_denoiser(mu: float, s: float):
    """Exact E[x0 | x] for x0 ~ N(mu, s^2), x = x0 + sigma * n."""

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sig2 = sigma.reshape(-1, *[1] * (x.ndim - 1)) ** 2
        return (s**2 * x + sig2 * mu) / (s**2 + sig2)

    return denoiser


def _ode_solution(x: torch.Tensor, mu: float, s: float, sigma_from: float, sigma_to: float):
    return mu + (x - mu) * math.sqrt(s**2 + sigma_to**2) / math.sqrt(s**2 + sigma_from**2)


def _geometric(sigma_max: float, sigma_min: float, n: int) -> torch.Tensor:
    return torch.linspace(
        math.log(sigma_max), math.log(sigma_min), n + 1, dtype=torch.float64
    ).exp()


def _uniform(sigma_max: float, sigma_min: float, n: int) -> torch.Tensor:
    return torch.linspace(sigma_max, sigma_min, n + 1, dtype=torch.float64)


MU, S = 0.5, 0.5
NO_LOF = dict(lower_order_final=False)  # a first-order last step would cap the order at 2

# (sampler, options, grid, sigma range, measured global order expected). Geometric grids from
# sigma = 80: there the trajectory is nearly linear, so lower-order warm-up steps add almost no
# error and the order of the full formula shows. Fixed-step Adams-Bashforth weights (plms,
# ipndm) assume equal steps: on a geometric grid they are only second order; on a uniform grid
# plms shows its 4th order. UniPC-p with the corrector UniC is of order p + 1 (Zhao et al.).
ORDER_CASES = {
    "ddim": (sample_ddim, {}, _geometric, (80.0, 0.5), 1.0),
    "ipndm_v": (sample_ipndm_v, {}, _geometric, (80.0, 0.5), 4.0),
    "deis": (sample_deis, {}, _geometric, (80.0, 0.5), 3.0),
    "uni_pc": (sample_uni_pc, NO_LOF, _geometric, (80.0, 0.5), 4.0),
    "uni_pc_bh2": (sample_uni_pc_bh2, NO_LOF, _geometric, (80.0, 0.5), 4.0),
    "plms_geometric": (sample_plms, {}, _geometric, (80.0, 0.5), 2.0),
    "ipndm_geometric": (sample_ipndm, {}, _geometric, (80.0, 0.5), 2.0),
    "plms_uniform": (sample_plms, {}, _uniform, (2.0, 0.5), 4.0),
}


@pytest.mark.parametrize("case", list(ORDER_CASES))
def test_ode_samplers_converge_at_their_order(case: str) -> None:
    sampler, options, grid, (sigma_max, sigma_min), expected = ORDER_CASES[case]
    den = _gaussian_denoiser(MU, S)
    x = MU + torch.linspace(-2, 2, 5, dtype=torch.float64)[:, None] * (S**2 + sigma_max**2) ** 0.5
    exact = _ode_solution(x, MU, S, sigma_max, sigma_min)
    n1, n2 = (40, 80) if case == "plms_uniform" else (80, 160)
    errs = [
        float(
            (sampler(den, x, grid(sigma_max, sigma_min, n), disable=True, **options) - exact).norm()
        )
        for n in (n1, n2)
    ]
    measured = math.log2(errs[0] / errs[1])
    assert abs(measured - expected) < 0.3, (errs, measured)


# max abs error after 30 Karras steps (data std 0.5, |x(0) - mu| <= 1): first-order DDIM is off
# by ~0.09, the multistep methods by ~1e-3 to 1e-2 (measured: plms 5.4e-3, ipndm 5.3e-3,
# ipndm_v 8.2e-3, deis 5.9e-4, uni_pc 2.4e-3, uni_pc_bh2 2.5e-3)
REACH_TOL = dict(ddim=0.1, plms=0.01, ipndm=0.01, ipndm_v=0.01, deis=1e-3, uni_pc=4e-3)
REACH_TOL["uni_pc_bh2"] = REACH_TOL["uni_pc"]


@pytest.mark.parametrize("name", list(REACH_TOL))
def test_ode_samplers_reach_the_data_mean_and_scale(name: str) -> None:
    # 30 Karras-like steps to sigma = 0: x(0) = mu + (x_T - mu) s / sqrt(s^2 + sigma_max^2)
    den = _gaussian_denoiser(MU, S)
    ramp = torch.linspace(0, 1, 30, dtype=torch.float64)
    sigmas = (80 ** (1 / 7) + ramp * (0.01 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    x = MU + torch.linspace(-2, 2, 5, dtype=torch.float64)[:, None] * (S**2 + 80.0**2) ** 0.5
    out = EXTRA_SAMPLERS[name](den, x, sigmas, disable=True)
    torch.testing.assert_close(
        out, _ode_solution(x, MU, S, 80.0, 0.0), atol=REACH_TOL[name], rtol=0
    )


def _vp_moments(sigmas: list[float], mu: float, s: float, eta: float) -> tuple[float, float]:
    """Mean and variance of the final sample of DDIM(eta) with the exact x0 estimate, from the
    paper's VP recursion (Song et al. 2020, eq. 12): every map is linear-Gaussian."""
    a = [1 / (1 + sg**2) for sg in sigmas]
    mean, var = math.sqrt(a[0]) * mu, a[0] * s**2 + 1 - a[0]
    for a_t, a_prev in zip(a[:-1], a[1:]):
        k = math.sqrt(a_t) * s**2 / (a_t * s**2 + 1 - a_t)  # x0_hat = mu + k (x - sqrt(a_t) mu)
        std = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        c = math.sqrt(max(1 - a_prev - std**2, 0.0)) / math.sqrt(1 - a_t)

        def step(x: float, k=k, c=c, a_t=a_t, a_prev=a_prev) -> float:
            x0 = mu + k * (x - math.sqrt(a_t) * mu)
            return math.sqrt(a_prev) * x0 + c * (x - math.sqrt(a_t) * x0)

        slope = step(1.0) - step(0.0)
        mean, var = step(mean), slope**2 * var + std**2
    return mean, var


def _check_moments(out: torch.Tensor, mean: float, var: float) -> None:
    n = out.numel()
    assert abs(float(out.mean()) - mean) < 5 * math.sqrt(var / n)
    assert abs(float(out.var()) / var - 1) < 5 * math.sqrt(2 / n)


@pytest.mark.parametrize("name, eta", [("ddpm", 1.0), ("ddim", 1.0), ("ddim", 0.5)])
def test_stochastic_samplers_final_moments(name: str, eta: float) -> None:
    sigmas = torch.cat([_geometric(20.0, 0.05, 9), torch.zeros(1, dtype=torch.float64)])
    gen = torch.Generator().manual_seed(0)
    x = MU + torch.randn(100_000, 1, generator=gen, dtype=torch.float64) * (S**2 + 400) ** 0.5
    noise = lambda sg, sn: torch.randn(x.shape, generator=gen, dtype=x.dtype)  # noqa: E731
    kwargs = {} if name == "ddpm" else {"eta": eta}
    out = EXTRA_SAMPLERS[name](
        _gaussian_denoiser(MU, S), x, sigmas, disable=True, noise_sampler=noise, **kwargs
    )
    mean, var = _vp_moments(sigmas.tolist(), MU, S, eta)
    assert var < 0.8 * S**2  # 10 ancestral steps under-disperse: the check has teeth
    _check_moments(out, mean, var)


@pytest.mark.parametrize("n_steps", [1, 4])
def test_lcm_with_exact_consistency_function_samples_the_data(n_steps: int) -> None:
    # the exact consistency function maps x at sigma along the PF-ODE to sigma = 0
    def consistency(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sg = sigma.reshape(-1, *[1] * (x.ndim - 1))
        return MU + (x - MU) * S / (S**2 + sg**2) ** 0.5

    sigmas = torch.cat([_geometric(20.0, 0.5, n_steps - 1), torch.zeros(1, dtype=torch.float64)])
    gen = torch.Generator().manual_seed(1)
    x = MU + torch.randn(100_000, 1, generator=gen, dtype=torch.float64) * (S**2 + 400) ** 0.5
    noise = lambda sg, sn: torch.randn(x.shape, generator=gen, dtype=x.dtype)  # noqa: E731
    out = sample_lcm(consistency, x, sigmas, disable=True, noise_sampler=noise)
    _check_moments(out, MU, S**2)


# ---------------------------------------------------------------- coefficients, registry


def test_deis_coeffs_integrate_polynomials_in_log_sigma() -> None:
    sig, nxt = [2.0, 3.0, 5.0], 1.2
    assert deis_coeffs(sig[:1], nxt) == pytest.approx([nxt - sig[0]])
    # int_sigma^next p(log tau) dtau is exact for p of degree <= order - 1
    for power in range(3):
        expect = _int_log_power(nxt, power) - _int_log_power(sig[0], power)
        got = sum(c * math.log(sg) ** power for c, sg in zip(deis_coeffs(sig, nxt), sig))
        assert got == pytest.approx(expect, rel=1e-10)
    # a step to sigma = 0 is the limit of steps to small sigma
    assert deis_coeffs(sig, 0.0) == pytest.approx(deis_coeffs(sig, 1e-15), rel=1e-9)


def _int_log_power(t: float, power: int) -> float:
    """Antiderivative of log(t)^power: t, t (log t - 1), t (log^2 t - 2 log t + 2)."""
    lt = math.log(t)
    return t * [1.0, lt - 1, lt**2 - 2 * lt + 2][power]


def test_registry_signature_callback_and_model_calls() -> None:
    den = _gaussian_denoiser(MU, S)
    sigmas = torch.tensor([10.0, 3.0, 1.0, 0.3, 0.0], dtype=torch.float64)
    for name, sampler in EXTRA_SAMPLERS.items():
        calls, seen = [], []

        def counted(x, sigma, scale=1.0, calls=calls):
            calls.append(1)
            return den(x, sigma) * scale

        x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        out = sampler(counted, x * 10, sigmas, {"scale": 1.0}, seen.append, True)
        assert out.shape == x.shape and torch.isfinite(out).all(), name
        assert [d["i"] for d in seen] == [0, 1, 2, 3], name
        assert set(seen[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}, name
        calls_per_step = SAMPLER_INFO[name].model_calls_per_step
        assert len(calls) == 4 * calls_per_step + (name == "plms"), name


# ---------------------------------------------------------------- bad input

BAD_SIGMAS = {
    "2-D": torch.ones(2, 3),
    "increasing": torch.tensor([1.0, 2.0, 0.0]),
    "nan": torch.tensor([2.0, float("nan"), 0.0]),
    "inf": torch.tensor([float("inf"), 1.0, 0.0]),
}


@pytest.mark.parametrize("name", sorted(EXTRA_SAMPLERS))
@pytest.mark.parametrize("bad", list(BAD_SIGMAS))
def test_bad_sigmas_raise(name: str, bad: str) -> None:
    with pytest.raises(ValueError, match="sigmas"):
        EXTRA_SAMPLERS[name](_gaussian_denoiser(0, 1), torch.zeros(2, 3), BAD_SIGMAS[bad])


@pytest.mark.parametrize("name", ["plms", "ipndm", "ipndm_v", "deis", "uni_pc", "uni_pc_bh2"])
def test_multistep_samplers_need_strictly_decreasing_sigmas(name: str) -> None:
    with pytest.raises(ValueError, match="strictly decreasing"):
        EXTRA_SAMPLERS[name](
            _gaussian_denoiser(0, 1), torch.zeros(2), torch.tensor([2.0, 2.0, 0.0])
        )


@pytest.mark.parametrize("eta", [-0.1, float("nan"), float("inf"), "1"])
def test_bad_eta_raises(eta) -> None:
    with pytest.raises(ValueError, match="eta"):
        sample_ddim(_gaussian_denoiser(0, 1), torch.zeros(2), torch.tensor([1.0, 0.0]), eta=eta)


@pytest.mark.parametrize(
    "sampler, option, value",
    [
        (sample_plms, "order", 5),
        (sample_plms, "order", 0),
        (sample_ipndm, "max_order", 5),
        (sample_ipndm_v, "max_order", 0),
        (sample_deis, "max_order", 4),
        (sample_uni_pc, "order", 4),
        (sample_uni_pc_bh2, "order", 2.0),
    ],
)
def test_bad_order_raises(sampler, option: str, value) -> None:
    with pytest.raises(ValueError, match="order"):
        sampler(
            _gaussian_denoiser(0, 1), torch.zeros(2), torch.tensor([1.0, 0.0]), **{option: value}
        )


@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_ddim_is_k_diffusion_euler_in_sigma(eta: float) -> None:
    # DDIM's eq. 12 in VE form is an Euler step to sigma_down plus sigma_up noise
    from tests._refs import k_diffusion

    K = k_diffusion()
    den = _gaussian_denoiser(MU, S)
    sigmas = torch.tensor([14.0, 5.0, 1.5, 0.4, 0.1, 0.0], dtype=torch.float64)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 14
    out = sample_ddim(den, x, sigmas, eta=eta, noise_sampler=_noise(x, 7), disable=True)
    if eta == 0:
        ref = K.sampling.sample_euler(den, x, sigmas, disable=True)
    else:
        ref = K.sampling.sample_euler_ancestral(
            den, x, sigmas, eta=eta, noise_sampler=_noise(x, 7), disable=True
        )
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
