"""Schedules: parity with k-diffusion, diffusers and ComfyUI's formulas; bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genmodels.diffusion import schedules as S
from genmodels.diffusion.betainc import beta_ppf, betainc
from genmodels.diffusion.denoisers import DiscreteDenoiser, KarrasDenoiser
from tests._refs import k_diffusion


@pytest.fixture(scope="module")
def sd_model() -> DiscreteDenoiser:
    return DiscreteDenoiser(torch.nn.Identity(), S.make_alphas_cumprod(), "eps")


@pytest.mark.parametrize("n", [1, 2, 10, 37])
def test_sigma_functions_match_k_diffusion(n: int) -> None:
    K = k_diffusion().sampling
    args = (n, 0.0292, 14.6146)
    torch.testing.assert_close(S.get_sigmas_karras(*args), K.get_sigmas_karras(*args))
    torch.testing.assert_close(
        S.get_sigmas_karras(*args, rho=3.0), K.get_sigmas_karras(*args, rho=3.0)
    )
    torch.testing.assert_close(S.get_sigmas_exponential(*args), K.get_sigmas_exponential(*args))
    torch.testing.assert_close(
        S.get_sigmas_polyexponential(*args, rho=2.0), K.get_sigmas_polyexponential(*args, rho=2.0)
    )
    torch.testing.assert_close(S.get_sigmas_vp(n), K.get_sigmas_vp(n))


def test_beta_schedules_match_diffusers() -> None:
    from diffusers import DDPMScheduler

    for name, kw in [
        ("linear", dict(beta_start=0.0001, beta_end=0.02)),
        ("scaled_linear", dict(beta_start=0.00085, beta_end=0.012)),
        ("squaredcos_cap_v2", {}),
    ]:
        ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=name, **kw)
        start, end = kw.get("beta_start", 0.00085), kw.get("beta_end", 0.012)
        ours = S.make_beta_schedule(name, 1000, start, end)
        torch.testing.assert_close(ours.float(), ref.betas, rtol=1e-5, atol=1e-7)
        ac = S.betas_to_alphas_cumprod(ours)
        torch.testing.assert_close(ac.float(), ref.alphas_cumprod, rtol=1e-5, atol=1e-7)


def test_sd_sigma_range(sd_model: DiscreteDenoiser) -> None:
    # The well-known SD 1.x/2.x noise range
    assert sd_model.sigma_min == pytest.approx(0.0292, abs=1e-4)
    assert sd_model.sigma_max == pytest.approx(14.6146, abs=1e-3)


def test_zero_terminal_snr_matches_diffusers() -> None:
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr

    betas = S.make_beta_schedule("scaled_linear")
    ref = torch.cumprod(1 - rescale_zero_terminal_snr(betas.float()), 0)
    ours = S.rescale_zero_terminal_snr(S.betas_to_alphas_cumprod(betas))
    torch.testing.assert_close(ours[:-1].float(), ref[:-1], rtol=1e-4, atol=1e-7)
    assert ref[-1] == 0 and ours[-1] == S.ZERO_SNR_ALPHA_CUMPROD
    # first value unchanged, SNR strictly decreasing to (almost) zero
    assert ours[0] == pytest.approx(float(S.betas_to_alphas_cumprod(betas)[0]), rel=1e-12)
    assert bool((ours[1:] < ours[:-1]).all())


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 20, 50])
def test_timestep_spacing_matches_diffusers(spacing: str, steps: int) -> None:
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    ref.set_timesteps(steps)
    offset = 1 if spacing == "leading" else 0
    ours = S.discrete_timesteps(steps, 1000, spacing, steps_offset=offset)
    assert ours.tolist() == ref.timesteps.tolist()


def _comfy_normal(model: DiscreteDenoiser, steps: int, sgm: bool) -> list[float]:
    # ComfyUI's normal_scheduler: timestep() rounds to the nearest training step,
    # sigma() interpolates log-sigma; linspace in timestep space.
    start = float(model.sigma_to_t(torch.tensor(model.sigma_max), quantize=True))
    end = float(model.sigma_to_t(torch.tensor(model.sigma_min), quantize=True))
    ts = torch.linspace(start, end, steps + 1)[:-1] if sgm else torch.linspace(start, end, steps)
    return [float(model.t_to_sigma(t)) for t in ts] + [0.0]


@pytest.mark.parametrize("steps", [1, 4, 20, 33])
def test_named_schedulers(sd_model: DiscreteDenoiser, steps: int) -> None:
    table = sd_model.sigmas
    normal = S.compute_sigmas("normal", sd_model, steps)
    assert normal.tolist() == pytest.approx(_comfy_normal(sd_model, steps, False), rel=1e-6)
    sgm = S.compute_sigmas("sgm_uniform", sd_model, steps)
    assert sgm.tolist() == pytest.approx(_comfy_normal(sd_model, steps, True), rel=1e-6)
    simple = S.compute_sigmas("simple", sd_model, steps)
    expect = [float(table[-(1 + int(i * 1000 / steps))]) for i in range(steps)] + [0.0]
    assert simple.tolist() == pytest.approx(expect)
    ddim = S.compute_sigmas("ddim_uniform", sd_model, steps)
    stride = 1000 // steps
    expect = [float(table[t]) for t in range(1, 1000, stride)][::-1] + [0.0]
    assert ddim.tolist() == pytest.approx(expect)
    karras = S.compute_sigmas("karras", sd_model, steps)
    torch.testing.assert_close(
        karras, S.get_sigmas_karras(steps, sd_model.sigma_min, sd_model.sigma_max)
    )
    for name in S.SCHEDULERS:
        sig = S.compute_sigmas(name, sd_model, steps)
        assert sig[-1] == 0 and bool((sig[1:] <= sig[:-1]).all()), name
        assert bool(torch.isfinite(sig).all()), name


def test_beta_scheduler_matches_scipy(sd_model: DiscreteDenoiser) -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    for steps in (5, 20, 40):
        q = 1 - np.linspace(0, 1, steps, endpoint=False)
        ts = np.rint(scipy_stats.beta.ppf(q, 0.6, 0.6) * 999).astype(int)
        dedup = [t for i, t in enumerate(ts) if i == 0 or t != ts[i - 1]]
        expect = [float(sd_model.sigmas[t]) for t in dedup] + [0.0]
        assert S.compute_sigmas("beta", sd_model, steps).tolist() == pytest.approx(expect)
    x = torch.linspace(0, 1, 41, dtype=torch.float64)
    for a, b in [(0.6, 0.6), (2.0, 5.0), (0.3, 1.7)]:
        ref = torch.from_numpy(scipy_stats.beta.cdf(x.numpy(), a, b))
        torch.testing.assert_close(betainc(x, a, b), ref, rtol=0, atol=1e-12)
        q = torch.linspace(0.01, 0.99, 9, dtype=torch.float64)
        ref_q = torch.from_numpy(scipy_stats.beta.ppf(q.numpy(), a, b))
        torch.testing.assert_close(beta_ppf(q, a, b), ref_q, rtol=0, atol=1e-10)


def test_linear_quadratic_and_kl_optimal(sd_model: DiscreteDenoiser) -> None:
    # hand-computed linear_quadratic (Mochi) for 4 steps: linear part 0, thr/2; quadratic after
    sig = S.compute_sigmas("linear_quadratic", sd_model, 4) / sd_model.sigma_max
    thr, lin, quad = 0.025, 2, 2
    diff = lin - thr * 4
    qc, lc = diff / (lin * quad**2), thr / lin - 2 * diff / quad**2
    c = qc * lin**2
    expect = [1 - 0, 1 - thr / 2, 1 - (qc * 4 + lc * 2 + c), 1 - (qc * 9 + lc * 3 + c), 0.0]
    assert sig.tolist() == pytest.approx(expect, abs=1e-6)
    kl = S.get_sigmas_kl_optimal(5, 0.03, 14.6)
    ramp = torch.arange(5) / 4
    expect = torch.tan(ramp * math.atan(0.03) + (1 - ramp) * math.atan(14.6))
    torch.testing.assert_close(kl[:-1], expect)


def test_continuous_model_schedulers() -> None:
    edm = KarrasDenoiser(torch.nn.Identity())
    normal = S.compute_sigmas("normal", edm, 10)
    logs = normal[:-1].log()
    torch.testing.assert_close(logs, torch.linspace(math.log(80), math.log(0.002), 10))
    with pytest.raises(ValueError, match="discrete model"):
        S.compute_sigmas("simple", edm, 10)


def test_bad_input(sd_model: DiscreteDenoiser) -> None:
    with pytest.raises(ValueError, match="unknown scheduler 'nope'.*karras"):
        S.compute_sigmas("nope", sd_model, 10)
    with pytest.raises(ValueError, match="steps"):
        S.compute_sigmas("karras", sd_model, 0)
    with pytest.raises(ValueError, match="steps"):
        S.compute_sigmas("karras", sd_model, -3)
    with pytest.raises(ValueError, match=">= 1"):
        S.get_sigmas_karras(0, 0.1, 10)
    with pytest.raises(ValueError, match="sigma_min"):
        S.get_sigmas_exponential(5, 10.0, 0.1)
    with pytest.raises(ValueError, match="unknown beta schedule"):
        S.make_beta_schedule("quadratic")
    with pytest.raises(ValueError, match="spacing"):
        S.discrete_timesteps(10, spacing="middle")
    assert S.resolve_scheduler("Karras") == "karras"
    assert S.resolve_scheduler("SGM Uniform") == "sgm_uniform"
